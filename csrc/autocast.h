// The forward ops' autocast kernels: under torch.autocast(device), every floating argument
// but float64 (input, states, weights) is cast to the autocast dtype, then the op runs below
// autocast. So the GEMMs run in bf16/fp16 as torch.nn's do, the cells' pointwise math in fp32
// as in every low-precision op call, and mixed dtypes that autocast allows (a state fed back
// from an earlier autocast call, fp32 hx with bf16 input) reach the op in one dtype.
//
// The casts go through ATen's at::autocast::cached_cast: a float32 leaf that requires grad
// (a module's weight) is cast once per autocast region and then reused, as ATen's own
// autocast kernels do; the cast is differentiable, so gradients reach the fp32 parameters in
// fp32. The backward ops need no kernel here: autograd calls them with the forward's dtypes,
// and autocast falls through for ops without one.
//
// Which dtypes the modules then return is torch.nn's rule per module (fused_rnn/_autocast.py).
#pragma once
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <optional>

namespace fused_rnn {

template <c10::DeviceType kDevice>
struct AutocastCast {
  at::ScalarType to;

  at::Tensor operator()(const at::Tensor& t) const { return at::autocast::cached_cast(to, t, kDevice); }
  std::optional<at::Tensor> operator()(const std::optional<at::Tensor>& t) const {
    return at::autocast::cached_cast(to, t, kDevice);
  }
  // Non-tensor arguments (nonlinearity, reverse, need_workspace) pass unchanged.
  template <class T>
  const T& operator()(const T& value) const {
    return value;
  }
};

// The autocast kernel of the op named kOp whose signature is R(Args...).
template <c10::DeviceType kDevice, class Signature>
struct AutocastKernel;

template <c10::DeviceType kDevice, class R, class... Args>
struct AutocastKernel<kDevice, R(Args...)> {
  template <const char* kOp>
  static R call(Args... args) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kOp, "").template typed<R(Args...)>();
    const AutocastCast<kDevice> cast{at::autocast::get_lower_precision_fp_from_device_type(kDevice)};
    return op.call(cast(args)...);
  }
};

inline constexpr char kLstmForward[] = "fused_rnn::lstm_forward";
inline constexpr char kGruForward[] = "fused_rnn::gru_forward";
inline constexpr char kRnnForward[] = "fused_rnn::rnn_forward";
inline constexpr char kLstmCellForward[] = "fused_rnn::lstm_cell_forward";
inline constexpr char kGruCellForward[] = "fused_rnn::gru_cell_forward";
inline constexpr char kRnnCellForward[] = "fused_rnn::rnn_cell_forward";

// Registers the forward ops' autocast kernels for one device (in a TORCH_LIBRARY_IMPL block
// of that device's Autocast key). Impls: any OpImpls<Device>, for the ops' signatures.
template <c10::DeviceType kDevice, class Impls>
void register_autocast(torch::Library& m) {
  m.impl("lstm_forward", &AutocastKernel<kDevice, decltype(Impls::lstm_forward)>::template call<kLstmForward>);
  m.impl("gru_forward", &AutocastKernel<kDevice, decltype(Impls::gru_forward)>::template call<kGruForward>);
  m.impl("rnn_forward", &AutocastKernel<kDevice, decltype(Impls::rnn_forward)>::template call<kRnnForward>);
  m.impl("lstm_cell_forward",
         &AutocastKernel<kDevice, decltype(Impls::lstm_cell_forward)>::template call<kLstmCellForward>);
  m.impl("gru_cell_forward",
         &AutocastKernel<kDevice, decltype(Impls::gru_cell_forward)>::template call<kGruCellForward>);
  m.impl("rnn_cell_forward",
         &AutocastKernel<kDevice, decltype(Impls::rnn_cell_forward)>::template call<kRnnCellForward>);
}

}  // namespace fused_rnn
