// The eager training call of a single-step op (fused_rnn.functional's _call) with its autograd
// node written in C++. A cell step is tens of microseconds of work, and Python around autograd
// (an autograd.Function's apply and backward) cost about as much again per call. The node runs
// the same backward op as the registered formula (fused_rnn/_ops.py), which torch.compile,
// torch.func and autocast keep using; only double backward (create_graph=True) calls back into
// Python, where the formula differentiates the reference.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

namespace fused_rnn {

using torch::autograd::variable_list;

// fused_rnn._ops.step_double_backward(name, inputs, masks, extras, grads) -> a gradient (or None)
// per input: set by _ops at import. Never destroyed (nodes may outlive the interpreter's modules).
inline pybind11::object& step_double_backward() {
  static auto* fn = new pybind11::object();
  return *fn;
}

// The forward and backward op of the single-step op `name` ("lstm_cell", ...).
struct StepOps {
  c10::OperatorHandle forward, backward;
  static const StepOps& get(const std::string& name) {
    static const auto make = [](const std::string& n) {
      auto& d = c10::Dispatcher::singleton();
      return StepOps{d.findSchemaOrThrow(("fused_rnn::" + n + "_forward").c_str(), ""),
                     d.findSchemaOrThrow(("fused_rnn::" + n + "_backward").c_str(), "")};
    };
    static const StepOps lstm = make("lstm_cell"), gru = make("gru_cell"), rnn = make("rnn_cell");
    if (name == "lstm_cell") return lstm;
    if (name == "gru_cell") return gru;
    TORCH_CHECK(name == "rnn_cell", "fused_rnn: no single-step op ", name);
    return rnn;
  }
};

using OptTensors = std::vector<std::optional<at::Tensor>>;

// The node of one step: its inputs (input, states, weights; absent weights as nullopt) and masks
// (zoneout's, not differentiable) saved, one next edge per present input, one input (gradient)
// per state the step returns.
class StepBackward : public torch::autograd::Node {
 public:
  StepBackward(std::string name, const OptTensors& inputs, const OptTensors& masks, std::vector<std::string> extras,
               const at::Tensor& workspace, size_t n_states)
      : name_(std::move(name)), extras_(std::move(extras)), n_states_(n_states) {
    save(inputs, &saved_);
    save(masks, &saved_masks_);
    workspace_ = torch::autograd::SavedVariable(workspace, false);
  }

  std::string name() const override { return "FusedRnnStepBackward"; }

  void release_variables() override {
    for (auto* list : {&saved_, &saved_masks_}) {
      for (auto& s : *list) {
        if (s) s->reset_data();
      }
    }
    workspace_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const OptTensors inputs = unpack(saved_), masks = unpack(saved_masks_);
    // An unused state's gradient arrives undefined: zeros of the state (a state keeps its shape).
    for (size_t i = 0; i < n_states_; ++i) {
      if (!grads[i].defined()) grads[i] = at::zeros_like(*inputs[1 + i]);
    }
    const OptTensors per_input =
        at::GradMode::is_enabled() ? python_grads(inputs, masks, grads) : backward_op(inputs, masks, grads);
    variable_list out;  // one per next edge: the present inputs, in order
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i]) out.push_back(per_input[i].value_or(at::Tensor()));
    }
    return out;
  }

 private:
  using Saved = std::vector<std::optional<torch::autograd::SavedVariable>>;

  static void save(const OptTensors& tensors, Saved* saved) {
    for (const auto& t : tensors) {
      saved->emplace_back(t.has_value() ? std::optional<torch::autograd::SavedVariable>(std::in_place, *t, false)
                                        : std::nullopt);
    }
  }

  static OptTensors unpack(const Saved& saved) {
    OptTensors out;
    for (const auto& s : saved) out.push_back(s ? std::optional<at::Tensor>(s->unpack()) : std::nullopt);
    return out;
  }

  OptTensors backward_op(const OptTensors& inputs, const OptTensors& masks, const variable_list& grads) {
    torch::jit::Stack stack;
    for (size_t i = 0; i < n_states_; ++i) stack.emplace_back(grads[i]);
    for (const auto* list : {&inputs, &masks}) {
      for (const auto& t : *list) stack.emplace_back(t.has_value() ? c10::IValue(*t) : c10::IValue());
    }
    for (const auto& e : extras_) stack.emplace_back(e);
    stack.emplace_back(workspace_.unpack());
    // output_mask: only what the engine will pass on (an input that needs no gradient, frozen
    // weights: each of those is a GEMM the step's backward leaves out).
    c10::List<bool> mask;
    size_t edge = 0;
    for (const auto& t : inputs) mask.push_back(t.has_value() && task_should_compute_output(edge++));
    stack.emplace_back(mask);
    StepOps::get(name_).backward.callBoxed(&stack);
    OptTensors result;
    for (size_t i = 0; i < inputs.size(); ++i) {
      result.push_back(mask[i] ? std::optional<at::Tensor>(stack[i].toTensor()) : std::nullopt);
    }
    return result;
  }

  OptTensors python_grads(const OptTensors& inputs, const OptTensors& masks, const variable_list& grads) {
    pybind11::gil_scoped_acquire gil;
    TORCH_CHECK(step_double_backward(), "fused_rnn: the double backward formula was not registered");
    const auto result =
        step_double_backward()(name_, inputs, masks, extras_, std::vector<at::Tensor>(grads.begin(), grads.end()));
    return result.cast<OptTensors>();
  }

  std::string name_;
  std::vector<std::string> extras_;
  size_t n_states_;
  Saved saved_, saved_masks_;
  torch::autograd::SavedVariable workspace_;
};

// The single-step op `name` on `inputs` (input, states, weights; None for an absent weight),
// `masks` (zoneout's, None when off) and `extras` (the nonlinearity), with the workspace kept
// and the states returned with a StepBackward as their grad_fn. Returns the states after the step.
inline std::vector<at::Tensor> step_with_grad(const std::string& name, const OptTensors& inputs,
                                              const OptTensors& masks, const std::vector<std::string>& extras,
                                              int64_t n_states) {
  torch::jit::Stack stack;
  for (const auto* list : {&inputs, &masks}) {
    for (const auto& t : *list) stack.emplace_back(t.has_value() ? c10::IValue(*t) : c10::IValue());
  }
  for (const auto& e : extras) stack.emplace_back(e);
  stack.emplace_back(true);  // need_workspace
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    StepOps::get(name).forward.callBoxed(&stack);
  }
  std::vector<at::Tensor> states;
  for (int64_t i = 0; i < n_states; ++i) states.push_back(stack[i].toTensor());
  const at::Tensor workspace = stack[n_states].toTensor();
  std::vector<at::Tensor> present;
  for (const auto& t : inputs) {
    if (t) present.push_back(*t);
  }
  auto node = c10::make_intrusive<StepBackward>(name, inputs, masks, extras, workspace, static_cast<size_t>(n_states));
  node->set_next_edges(torch::autograd::collect_next_edges(present));
  for (auto& s : states) torch::autograd::set_history(s, node);
  return states;
}

}  // namespace fused_rnn
