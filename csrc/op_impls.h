// The registered ops' implementations, generic over the Device (CpuDevice, CudaDevice): they
// name the cell, call the driver (recurrence.h: a layer; single_step.h: one step), and lay its
// named results out as the op schemas (ops.cpp) return them.
#pragma once
#include <array>
#include <string>
#include <tuple>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "recurrence.h"
#include "single_step.h"

namespace fused_rnn {

template <class Device>
struct OpImpls {
  // The schemas' result tuples, in the order their comments give.
  using LstmOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;  // output, h_n, c_n, workspace
  using Outputs = std::tuple<Tensor, Tensor, Tensor>;              // output, h_n, workspace
  // grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_weight_hr,
  // grad_weight_ch, grad_ln_weight_ih, grad_ln_weight_hh, grad_ln_weight_c, grad_ln_bias_c
  using LstmGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                               Tensor, Tensor>;
  // grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_ln_weight_ih,
  // grad_ln_weight_hh
  using GruGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  // grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh
  using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

  static LstmOutputs lstm_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                  const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                  const OptTensor& w_hr, const OptTensor& w_ch, const OptTensor& ln_ih,
                                  const OptTensor& ln_hh, const OptTensor& ln_c, const OptTensor& ln_bias_c,
                                  const OptTensor& zoneout_h, const OptTensor& zoneout_c, const OptTensor& dropout_h,
                                  bool reverse, bool need_workspace) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh, w_hr, w_ch, ln_ih, ln_hh, ln_c, ln_bias_c};
    const LayerMasks masks{zoneout_h, zoneout_c, dropout_h};
    const LayerOutputs r =
        layer_forward<LstmCell, Device>(input, batch_sizes, h0, c0, w, masks, reverse, need_workspace);
    return {r.output, r.h_n, r.c_n, r.workspace};
  }

  static LstmGrads lstm_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                                 const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                 const OptTensor& w_hr, const OptTensor& w_ch, const OptTensor& ln_ih,
                                 const OptTensor& ln_hh, const OptTensor& ln_c, const OptTensor& ln_bias_c,
                                 const OptTensor& zoneout_h, const OptTensor& zoneout_c, const OptTensor& dropout_h,
                                 const Tensor& workspace, bool reverse) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh, w_hr, w_ch, ln_ih, ln_hh, ln_c, ln_bias_c};
    const LayerMasks masks{zoneout_h, zoneout_c, dropout_h};
    return lstm_grads(layer_backward<LstmCell, Device>(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w,
                                                       masks, workspace, reverse));
  }

  static Outputs gru_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& ln_ih,
                             const OptTensor& ln_hh, const OptTensor& zoneout_h, const OptTensor& dropout_h,
                             bool reverse, bool need_workspace) {
    return forward<GruCell>(input, batch_sizes, h0, gru_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh),
                            {zoneout_h, std::nullopt, dropout_h}, reverse, need_workspace);
  }

  static GruGrads gru_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& ln_ih,
                               const OptTensor& ln_hh, const OptTensor& zoneout_h, const OptTensor& dropout_h,
                               const Tensor& workspace, bool reverse) {
    const LayerGrads g = layer_backward<GruCell, Device>(
        grad_output, grad_h_n, std::nullopt, input, batch_sizes, h0, std::nullopt,
        gru_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh), {zoneout_h, std::nullopt, dropout_h}, workspace, reverse);
    return gru_grads(g);
  }

  static Outputs rnn_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                             const OptTensor& zoneout_h, const OptTensor& dropout_h, c10::string_view nonlinearity,
                             bool reverse, bool need_workspace) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh};
    const LayerMasks masks{zoneout_h, std::nullopt, dropout_h};
    return is_relu(nonlinearity) ? forward<RnnReluCell>(input, batch_sizes, h0, w, masks, reverse, need_workspace)
                                 : forward<RnnTanhCell>(input, batch_sizes, h0, w, masks, reverse, need_workspace);
  }

  static Grads rnn_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                            const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                            const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& zoneout_h,
                            const OptTensor& dropout_h, c10::string_view nonlinearity, const Tensor& workspace,
                            bool reverse) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh};
    const LayerMasks m{zoneout_h, std::nullopt, dropout_h};
    return is_relu(nonlinearity) ? one_state_backward<RnnReluCell>(grad_output, grad_h_n, input, batch_sizes, h0, w, m,
                                                                   workspace, reverse)
                                 : one_state_backward<RnnTanhCell>(grad_output, grad_h_n, input, batch_sizes, h0, w, m,
                                                                   workspace, reverse);
  }

  // Single steps: the states after the step (and the workspace); the gradients as above.
  using LstmStepOutputs = std::tuple<Tensor, Tensor, Tensor>;  // h_n, c_n, workspace
  using StepOutputs = std::tuple<Tensor, Tensor>;              // h_n, workspace

  static LstmStepOutputs lstm_cell_forward(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                           const OptTensor& w_hr, const OptTensor& w_ch, const OptTensor& ln_ih,
                                           const OptTensor& ln_hh, const OptTensor& ln_c, const OptTensor& ln_bias_c,
                                           const OptTensor& zoneout_h, const OptTensor& zoneout_c,
                                           bool need_workspace) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh, w_hr, w_ch, ln_ih, ln_hh, ln_c, ln_bias_c};
    const auto r = step_forward<LstmCell, Device>(input, h0, c0, w, {zoneout_h, zoneout_c}, need_workspace);
    return {r.h_n, r.c_n, r.workspace};
  }

  static LstmGrads lstm_cell_backward(const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
                                      const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                                      const OptTensor& w_ch, const OptTensor& ln_ih, const OptTensor& ln_hh,
                                      const OptTensor& ln_c, const OptTensor& ln_bias_c, const OptTensor& zoneout_h,
                                      const OptTensor& zoneout_c, const Tensor& workspace,
                                      std::array<bool, 13> output_mask) {
    const auto& m = output_mask;
    const GradMask mask{m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12]};
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh, w_hr, w_ch, ln_ih, ln_hh, ln_c, ln_bias_c};
    return lstm_grads(
        step_backward<LstmCell, Device>(grad_h_n, grad_c_n, input, h0, c0, w, {zoneout_h, zoneout_c}, workspace, mask));
  }

  static StepOutputs gru_cell_forward(const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& ln_ih,
                                      const OptTensor& ln_hh, const OptTensor& zoneout_h, bool need_workspace) {
    return cell_forward<GruCell>(input, h0, gru_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh), zoneout_h,
                                 need_workspace);
  }

  static GruGrads gru_cell_backward(const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                    const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& zoneout_h,
                                    const Tensor& workspace, std::array<bool, 8> output_mask) {
    const auto& m = output_mask;
    const GradMask mask{m[0], m[1], false, m[2], m[3], m[4], m[5], false, false, m[6], m[7], false, false};
    return gru_grads(step_backward<GruCell, Device>(grad_h_n, std::nullopt, input, h0, std::nullopt,
                                                    gru_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh),
                                                    {zoneout_h, std::nullopt}, workspace, mask));
  }

  static StepOutputs rnn_cell_forward(const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& zoneout_h,
                                      c10::string_view nonlinearity, bool need_workspace) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh};
    return is_relu(nonlinearity) ? cell_forward<RnnReluCell>(input, h0, w, zoneout_h, need_workspace)
                                 : cell_forward<RnnTanhCell>(input, h0, w, zoneout_h, need_workspace);
  }

  static Grads rnn_cell_backward(const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                 const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                 const OptTensor& zoneout_h, c10::string_view nonlinearity, const Tensor& workspace,
                                 std::array<bool, 6> output_mask) {
    const LayerWeights w{w_ih, w_hh, b_ih, b_hh};
    const LayerMasks z{zoneout_h, std::nullopt};
    const auto& m = output_mask;
    const GradMask mask{m[0], m[1], false, m[2], m[3], m[4], m[5], false, false, false, false, false, false};
    const LayerGrads g =
        is_relu(nonlinearity)
            ? step_backward<RnnReluCell, Device>(grad_h_n, std::nullopt, input, h0, std::nullopt, w, z, workspace, mask)
            : step_backward<RnnTanhCell, Device>(grad_h_n, std::nullopt, input, h0, std::nullopt, w, z, workspace,
                                                 mask);
    return {g.input, g.h0, g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh};
  }

 private:
  static LayerWeights gru_weights(const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                  const OptTensor& ln_ih, const OptTensor& ln_hh) {
    return {w_ih, w_hh, b_ih, b_hh, std::nullopt, std::nullopt, ln_ih, ln_hh, std::nullopt, std::nullopt};
  }

  static LstmGrads lstm_grads(const LayerGrads& g) {
    return {g.input,     g.h0,        g.c0,           g.weight_ih,    g.weight_hh,   g.bias_ih,  g.bias_hh,
            g.weight_hr, g.weight_ch, g.ln_weight_ih, g.ln_weight_hh, g.ln_weight_c, g.ln_bias_c};
  }

  static GruGrads gru_grads(const LayerGrads& g) {
    return {g.input, g.h0, g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh, g.ln_weight_ih, g.ln_weight_hh};
  }

  static bool is_relu(c10::string_view nonlinearity) {
    TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", "Unknown nonlinearity '",
                      std::string(nonlinearity), "'. Select from 'tanh' or 'relu'.");
    return nonlinearity == "relu";
  }

  // The cells with one state (GRU, RNN): no c0 in, no c_n out.
  template <class Cell>
  static Outputs forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const LayerWeights& w,
                         const LayerMasks& masks, bool reverse, bool need_workspace) {
    const LayerOutputs r =
        layer_forward<Cell, Device>(input, batch_sizes, h0, std::nullopt, w, masks, reverse, need_workspace);
    return {r.output, r.h_n, r.workspace};
  }

  template <class Cell>
  static Grads one_state_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                                  const OptTensor& batch_sizes, const Tensor& h0, const LayerWeights& w,
                                  const LayerMasks& masks, const Tensor& workspace, bool reverse) {
    const LayerGrads g = layer_backward<Cell, Device>(grad_output, grad_h_n, std::nullopt, input, batch_sizes, h0,
                                                      std::nullopt, w, masks, workspace, reverse);
    return {g.input, g.h0, g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh};
  }

  template <class Cell>
  static StepOutputs cell_forward(const Tensor& input, const Tensor& h0, const LayerWeights& w,
                                  const OptTensor& zoneout_h, bool need_workspace) {
    const auto r = step_forward<Cell, Device>(input, h0, std::nullopt, w, {zoneout_h, std::nullopt}, need_workspace);
    return {r.h_n, r.workspace};
  }
};

// Registers the impls of every op for one dispatch key.
#define FUSED_RNN_REGISTER_IMPLS(m, Device)                                          \
  do {                                                                               \
    m.impl("lstm_forward", &::fused_rnn::OpImpls<Device>::lstm_forward);             \
    m.impl("lstm_backward", &::fused_rnn::OpImpls<Device>::lstm_backward);           \
    m.impl("gru_forward", &::fused_rnn::OpImpls<Device>::gru_forward);               \
    m.impl("gru_backward", &::fused_rnn::OpImpls<Device>::gru_backward);             \
    m.impl("rnn_forward", &::fused_rnn::OpImpls<Device>::rnn_forward);               \
    m.impl("rnn_backward", &::fused_rnn::OpImpls<Device>::rnn_backward);             \
    m.impl("lstm_cell_forward", &::fused_rnn::OpImpls<Device>::lstm_cell_forward);   \
    m.impl("lstm_cell_backward", &::fused_rnn::OpImpls<Device>::lstm_cell_backward); \
    m.impl("gru_cell_forward", &::fused_rnn::OpImpls<Device>::gru_cell_forward);     \
    m.impl("gru_cell_backward", &::fused_rnn::OpImpls<Device>::gru_cell_backward);   \
    m.impl("rnn_cell_forward", &::fused_rnn::OpImpls<Device>::rnn_cell_forward);     \
    m.impl("rnn_cell_backward", &::fused_rnn::OpImpls<Device>::rnn_cell_backward);   \
  } while (0)

}  // namespace fused_rnn
