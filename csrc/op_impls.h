// The registered ops' implementations, generic over the Device (CpuDevice, CudaDevice):
// they unpack schema arguments, pick the cell and call the driver.
#pragma once
#include <c10/core/DeviceGuard.h>

#include <string>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "recurrence.h"

namespace fused_rnn {

template <class Device>
struct OpImpls {
  using Tuple3 = std::tuple<Tensor, Tensor, Tensor>;
  using Tuple4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
  using Tuple6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
  using Tuple8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

  static Tuple4 lstm_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                             const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                             const OptTensor& w_hr, bool reverse, bool need_workspace) {
    const at::OptionalDeviceGuard guard(input.device());
    return layer_forward<LstmCell, Device>(input, batch_sizes, h0, c0, {w_ih, w_hh, b_ih, b_hh, w_hr}, reverse,
                                           need_workspace);
  }

  static Tuple8 lstm_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                              const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                              const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& w_hr, const Tensor& workspace, bool reverse) {
    const at::OptionalDeviceGuard guard(input.device());
    auto g = layer_backward<LstmCell, Device>(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0,
                                              {w_ih, w_hh, b_ih, b_hh, w_hr}, workspace, reverse);
    return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  }

  static Tuple3 gru_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                            const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reverse,
                            bool need_workspace) {
    return drop_cell_state(forward_without_cell_state<GruCell>(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                                               reverse, need_workspace));
  }

  static Tuple6 gru_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                             const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                             const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& workspace, bool reverse) {
    return backward_without_cell_state<GruCell>(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih,
                                                b_hh, workspace, reverse);
  }

  static Tuple3 rnn_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                            const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                            c10::string_view nonlinearity, bool reverse, bool need_workspace) {
    if (is_relu(nonlinearity)) {
      return drop_cell_state(forward_without_cell_state<RnnReluCell>(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                                                     reverse, need_workspace));
    }
    return drop_cell_state(forward_without_cell_state<RnnTanhCell>(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                                                   reverse, need_workspace));
  }

  static Tuple6 rnn_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                             const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                             const OptTensor& b_ih, const OptTensor& b_hh, c10::string_view nonlinearity,
                             const Tensor& workspace, bool reverse) {
    if (is_relu(nonlinearity)) {
      return backward_without_cell_state<RnnReluCell>(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh,
                                                      b_ih, b_hh, workspace, reverse);
    }
    return backward_without_cell_state<RnnTanhCell>(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih,
                                                    b_hh, workspace, reverse);
  }

 private:
  static bool is_relu(c10::string_view nonlinearity) {
    TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", "Unknown nonlinearity '",
                      std::string(nonlinearity), "'. Select from 'tanh' or 'relu'.");
    return nonlinearity == "relu";
  }

  static Tuple3 drop_cell_state(const Tuple4& r) { return {std::get<0>(r), std::get<1>(r), std::get<3>(r)}; }

  template <class Cell>
  static Tuple4 forward_without_cell_state(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                                           const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                           const OptTensor& b_hh, bool reverse, bool need_workspace) {
    const at::OptionalDeviceGuard guard(input.device());
    return layer_forward<Cell, Device>(input, batch_sizes, h0, std::nullopt, {w_ih, w_hh, b_ih, b_hh, std::nullopt},
                                       reverse, need_workspace);
  }

  template <class Cell>
  static Tuple6 backward_without_cell_state(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                                            const OptTensor& batch_sizes, const Tensor& h0, const Tensor& w_ih,
                                            const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                            const Tensor& workspace, bool reverse) {
    const at::OptionalDeviceGuard guard(input.device());
    auto g = layer_backward<Cell, Device>(grad_output, grad_h_n, std::nullopt, input, batch_sizes, h0, std::nullopt,
                                          {w_ih, w_hh, b_ih, b_hh, std::nullopt}, workspace, reverse);
    return {g[0], g[1], g[3], g[4], g[5], g[6]};
  }
};

// Registers the impls of every op for one dispatch key.
#define FUSED_RNN_REGISTER_IMPLS(m, Device)                                  \
  do {                                                                       \
    m.impl("lstm_forward", &::fused_rnn::OpImpls<Device>::lstm_forward);   \
    m.impl("lstm_backward", &::fused_rnn::OpImpls<Device>::lstm_backward); \
    m.impl("gru_forward", &::fused_rnn::OpImpls<Device>::gru_forward);     \
    m.impl("gru_backward", &::fused_rnn::OpImpls<Device>::gru_backward);   \
    m.impl("rnn_forward", &::fused_rnn::OpImpls<Device>::rnn_forward);     \
    m.impl("rnn_backward", &::fused_rnn::OpImpls<Device>::rnn_backward);   \
  } while (0)

}  // namespace fused_rnn
