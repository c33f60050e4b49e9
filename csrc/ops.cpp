// The op schemas (TORCH_LIBRARY), their CPU and autocast impls, and the Python module
// _C_<level> (setup.py builds one per CPU level): build facts, the cells' facts (gate count,
// workspace) for the Python side, CPU scratch, and _C.testing.
// CUDA impls are registered by ops_cuda.cpp, compiled only when CUDA is built.
#include <torch/extension.h>

#include "autocast.h"
#include "cpu/bernoulli.h"
#include "cpu_device.h"
#include "op_impls.h"
#include "step_autograd.h"

TORCH_LIBRARY(fused_rnn, m) {
  // The weights after torch.nn's own are those of the cell variants, None for a plain cell:
  // weight_ch (peephole LSTM, [3H]); ln_weight_ih, ln_weight_hh ([G*H]) and for the LSTM
  // ln_weight_c, ln_bias_c ([H]) (layer-normalized cells, given all or none).
  // Then the layer ops' regularizer masks (layer_masks.h), None when off: zoneout_h (and the
  // LSTM's zoneout_c) with the output's leading shape, the weight of the previous state per row
  // and unit; dropout_h [batch, state], recurrent dropout's scaled mask.
  m.def(
      "lstm_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor? weight_ch, "
      "Tensor? ln_weight_ih, Tensor? ln_weight_hh, Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? zoneout_h, "
      "Tensor? zoneout_c, Tensor? dropout_h, bool reverse, bool need_workspace) -> (Tensor output, Tensor h_n, "
      "Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? weight_hr, Tensor? weight_ch, Tensor? ln_weight_ih, Tensor? ln_weight_hh, "
      "Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? zoneout_h, Tensor? zoneout_c, Tensor? dropout_h, "
      "Tensor workspace, bool reverse) -> (Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, "
      "Tensor grad_bias_hh, Tensor grad_weight_hr, Tensor grad_weight_ch, Tensor grad_ln_weight_ih, "
      "Tensor grad_ln_weight_hh, Tensor grad_ln_weight_c, Tensor grad_ln_bias_c)");
  m.def(
      "gru_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? ln_weight_ih, Tensor? ln_weight_hh, Tensor? zoneout_h, "
      "Tensor? dropout_h, bool reverse, bool need_workspace) -> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, Tensor h0, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? ln_weight_ih, "
      "Tensor? ln_weight_hh, Tensor? zoneout_h, Tensor? dropout_h, Tensor workspace, bool reverse) -> "
      "(Tensor grad_input, Tensor grad_h0, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh, "
      "Tensor grad_ln_weight_ih, Tensor grad_ln_weight_hh)");
  m.def(
      "rnn_forward(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? zoneout_h, Tensor? dropout_h, str nonlinearity, bool reverse, "
      "bool need_workspace) -> "
      "(Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, Tensor h0, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? zoneout_h, Tensor? dropout_h, "
      "str nonlinearity, Tensor workspace, bool reverse) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh)");
  // One step of a cell (single_step.h): input [B, I], the states before the step, the same
  // weights, zoneout's masks ([B, state], [B, hidden]; None when off); the states after it, and
  // the workspace when need_workspace. Backward computes the
  // gradients output_mask asks for; the others come back as empty tensors.
  m.def(
      "lstm_cell_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? weight_hr, Tensor? weight_ch, Tensor? ln_weight_ih, Tensor? ln_weight_hh, "
      "Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? zoneout_h, Tensor? zoneout_c, bool need_workspace) -> "
      "(Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_cell_backward(Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor? weight_ch, "
      "Tensor? ln_weight_ih, Tensor? ln_weight_hh, Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? zoneout_h, "
      "Tensor? zoneout_c, Tensor workspace, bool[13] output_mask) -> (Tensor grad_input, Tensor grad_h0, Tensor "
      "grad_c0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_weight_hr, "
      "Tensor grad_weight_ch, Tensor grad_ln_weight_ih, Tensor grad_ln_weight_hh, Tensor grad_ln_weight_c, "
      "Tensor grad_ln_bias_c)");
  m.def(
      "gru_cell_forward(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? ln_weight_ih, Tensor? ln_weight_hh, Tensor? zoneout_h, bool need_workspace) -> "
      "(Tensor h_n, Tensor workspace)");
  m.def(
      "gru_cell_backward(Tensor grad_h_n, Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? ln_weight_ih, Tensor? ln_weight_hh, Tensor? zoneout_h, "
      "Tensor workspace, bool[8] output_mask) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_weight_ih, Tensor "
      "grad_weight_hh, "
      "Tensor grad_bias_ih, Tensor grad_bias_hh, Tensor grad_ln_weight_ih, Tensor grad_ln_weight_hh)");
  m.def(
      "rnn_cell_forward(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? zoneout_h, str nonlinearity, bool need_workspace) -> (Tensor h_n, Tensor workspace)");
  m.def(
      "rnn_cell_backward(Tensor grad_h_n, Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? zoneout_h, str nonlinearity, Tensor workspace, "
      "bool[6] output_mask) -> "
      "(Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh)");
  // The regularizers' masks on the CPU (cpu/bernoulli.h): [size] of dtype, 1 with probability p,
  // from seed (a one-element int64 tensor drawn from torch's generator).
  m.def("bernoulli_mask(Tensor seed, SymInt[] size, float p, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  FUSED_RNN_REGISTER_IMPLS(m, fused_rnn::CpuDevice);
  m.impl("bernoulli_mask", &fused_rnn::cpu::bernoulli_mask_op);
}

// Autocast for both devices here: the kernels only cast and redispatch, so a CPU-only build
// registers the CUDA one too (it is reached only with CUDA tensors).
TORCH_LIBRARY_IMPL(fused_rnn, AutocastCPU, m) {
  fused_rnn::register_autocast<c10::DeviceType::CPU, fused_rnn::OpImpls<fused_rnn::CpuDevice>>(m);
}
TORCH_LIBRARY_IMPL(fused_rnn, AutocastCUDA, m) {
  fused_rnn::register_autocast<c10::DeviceType::CUDA, fused_rnn::OpImpls<fused_rnn::CpuDevice>>(m);
}

#ifndef FUSED_RNN_CUDA_ARCHS
#define FUSED_RNN_CUDA_ARCHS ""
#endif
#ifndef FUSED_RNN_CPU_LEVEL
#define FUSED_RNN_CPU_LEVEL "default"
#endif

namespace {

// The facts of one cell that the Python side needs (fake kernels, tests), from the cell's
// own constants: the gate count and workspace width are written only in csrc/cells.
template <class Cell>
pybind11::dict cell_facts() {
  pybind11::dict d;
  d["gates"] = Cell::kGates;
  d["workspace_units"] = Cell::kWorkspace;
  d["has_cell_state"] = Cell::kHasCellState;
  return d;
}

// Hooks that exist only for the tests: nothing in the package calls them.
void add_testing_hooks(pybind11::module_& m) {
  m.def(
      "set_poison", [](bool on) { fused_rnn::poison_new_buffers() = on; },
      "Fill every buffer the ops allocate with NaN before the kernels write it.");
  m.def(
      "set_split_steps", [](bool on) { fused_rnn::cpu::split_steps_enabled() = on; },
      "Let CPU forwards of a few rows split their steps over threads (the default), or not.");
  m.def(
      "split_workers",
      [](int64_t rows, int64_t depth, int64_t gates, int64_t hidden, int64_t steps, bool splittable, bool float64) {
        const fused_rnn::StepPlan plan{rows, depth, gates, hidden, splittable};
        const int64_t lanes = float64 ? at::vec::Vectorized<double>::size() : at::vec::Vectorized<float>::size();
        return fused_rnn::cpu::split_workers(steps, plan, lanes);
      },
      "The threads a CPU forward splits such steps over by hidden units (1: not split).");
  m.def(
      "set_onednn_step_weights", [](bool on) { fused_rnn::cpu::OneDnnWeight::enabled() = on; },
      "Let bf16 per-step GEMMs multiply a weight oneDNN packed once per call (the default), or not.");
  m.def(
      "onednn_step_weights", [] { return fused_rnn::cpu::OneDnnWeight::usable(at::kBFloat16); },
      "Whether bf16 per-step GEMMs multiply a weight oneDNN packed once per call on this CPU.");
  m.def(
      "onednn_step_weight_pays",
      [](int64_t rows, int64_t columns, int64_t steps) {
        return fused_rnn::cpu::OneDnnWeight::pays(at::empty({rows, columns}, at::kBFloat16), steps);
      },
      "Whether a bf16 step weight of that shape is packed by oneDNN for a call of `steps` steps.");
  m.def(
      "nonlinearity",
      [](const std::string& name, const at::Tensor& x, bool reduced_storage) {
        TORCH_CHECK(name == "tanh" || name == "sigmoid", "nonlinearity: tanh or sigmoid, not ", name);
        TORCH_CHECK(!reduced_storage || x.scalar_type() == at::kFloat, "nonlinearity: reduced storage takes float");
        at::Tensor y = x.contiguous().clone();
        AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "nonlinearity", [&] {
          using V = at::vec::Vectorized<scalar_t>;
          const auto apply = [&](auto math) {
            using M = decltype(math);
            scalar_t* p = y.data_ptr<scalar_t>();
            for (int64_t i = 0; i < y.numel(); i += V::size()) {
              const int64_t count = std::min<int64_t>(V::size(), y.numel() - i);
              const V v = V::loadu(p + i, count);
              (name == "tanh" ? M::tanh(v) : M::sigmoid(v)).store(p + i, count);
            }
          };
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (reduced_storage) return apply(fused_rnn::CellMath<V, c10::BFloat16>());
          }
          apply(fused_rnn::CellMath<V, scalar_t>());
        });
        return y;
      },
      pybind11::arg("name"), pybind11::arg("x"), pybind11::arg("reduced_storage") = false,
      "tanh or sigmoid of a float or double CPU tensor, as the CPU pointwise passes compute it for "
      "values stored in x's dtype, or with reduced_storage=True in bfloat16 or float16.");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_rnn C++/CUDA kernels; the ops live in torch.ops.fused_rnn";
#ifdef FUSED_RNN_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  m.attr("cuda_archs") = FUSED_RNN_CUDA_ARCHS;
  m.attr("cpu_level") = FUSED_RNN_CPU_LEVEL;  // setup.py: the CPU level this module's kernels target
  pybind11::dict cells;
  cells["lstm"] = cell_facts<fused_rnn::LstmCell>();
  cells["gru"] = cell_facts<fused_rnn::GruCell>();
  cells["rnn_tanh"] = cell_facts<fused_rnn::RnnTanhCell>();
  cells["rnn_relu"] = cell_facts<fused_rnn::RnnReluCell>();
  m.attr("cells") = cells;
  m.def(
      "step_workspace_width",
      [](int64_t workspace_units, int64_t hidden, bool proj, int64_t norm_cols) {
        return fused_rnn::step_workspace_width(static_cast<int>(workspace_units), hidden, proj, norm_cols);
      },
      "Columns of the workspace a single-step forward (<cell>_cell_forward) returns.");
  m.def(
      "workspace_width",
      [](int64_t workspace_units, int64_t hidden, int64_t state, bool proj, int64_t norm_cols, bool dropout) {
        return fused_rnn::WorkspaceLayout::make(static_cast<int>(workspace_units), hidden, state, proj, norm_cols,
                                                dropout)
            .width;
      },
      "Columns of the workspace a forward with need_workspace=True returns, given the cell's "
      "workspace_units (cells[name]['workspace_units']), norm_columns and whether recurrent dropout is on.");
  m.def(
      "norm_columns",
      [](int64_t gates, int64_t hidden, bool has_cell_state, bool layer_norm) {
        return fused_rnn::norm_columns(static_cast<int>(gates), hidden, has_cell_state, layer_norm);
      },
      "Workspace columns a layer-normalized cell adds (0 without layer_norm).");
  m.def("step_with_grad", &fused_rnn::step_with_grad,
        "The single-step op `name` in eager training, with its autograd node in C++ (step_autograd.h).");
  m.def(
      "set_step_double_backward", [](pybind11::object fn) { fused_rnn::step_double_backward() = std::move(fn); },
      "The Python formula step_with_grad's node calls for create_graph=True.");
  m.def("scratch_bytes", &fused_rnn::scratch_bytes,
        "Bytes of CPU scratch memory the calling thread keeps between op calls.");
  m.def("release_scratch", &fused_rnn::release_scratch,
        "Frees the CPU scratch memory the calling thread keeps between op calls.");
  auto testing = m.def_submodule("testing", "Test hooks; nothing in fused_rnn calls them.");
  add_testing_hooks(testing);
}
