// The Device contract: what the time-loop driver (recurrence.h) asks of a device, and the
// scheduling types it passes. Two devices implement it: CpuDevice (cpu_device.h) and
// CudaDevice (cuda_device.h). The driver is a template over the Device, so the contract is
// checked by the compiler where the driver uses it; this header is where a reader finds it.
//
// A Device is a struct of static members and one nested class:
//
//   template <class F> static void dispatch(at::ScalarType st, const char* op, F&& fn);
//       Calls fn(T{}) with T the storage type of `st` (double, float, at::Half, at::BFloat16)
//       or raises naming `op` for a dtype the device does not run.
//
//   static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);
//       out = a @ b, or out += a @ b when accumulate. a, b may be transposed views. The one-off
//       GEMMs of a call go here: all steps' input projection, dx and the weight gradients.
//
//   class StepWeight {
//     StepWeight(const at::Tensor& b, int64_t steps, int64_t groups = 1);
//     void gemm(at::Tensor& out, const at::Tensor& a, bool accumulate, const Units& units = {}) const;
//     at::Tensor product(at::Tensor& out, const at::Tensor& a, const Units& units = {}) const;
//   };
//       The weight b of a GEMM that every step repeats (h W_hh^T, h W_hr^T, dG W_hh), made
//       once per op call for `steps` steps; b's columns are `groups` equal groups (the gates).
//       gemm() multiplies a step's rows; with units.split it computes only the columns of
//       units [begin, end) of every group (a device that never splits asserts !units.split).
//       product() is gemm() without accumulation that returns the result: `out`, or a tensor of
//       out's shape that a packed weight's library produced itself (saves the copy into out).
//
//   template <class T, class Body> static void for_each_step(int64_t n_steps, const StepPlan& plan, Body&& body);
//       Runs body(k, units, sync) for k = 0 .. n_steps - 1 in order. The device decides how:
//       whole steps on the calling thread (for_each_whole_step below), or, on the CPU, a step
//       of a few rows split over threads by hidden units, where sync() is a barrier among them.
//
//   template <class Cell, class T> static void forward_step(const ForwardStep<T>& a, const Units& units);
//   template <class Cell, class T> static void backward_step(const BackwardStep<T>& a);
//   template <class Cell, class T> static void single_step(const ForwardStep<T>& a, const at::Tensor& x,
//       const at::Tensor& w_ih_t, const at::Tensor& h, const at::Tensor& w_hh_t, at::Tensor& x_gates,
//       at::Tensor& h_gates, bool accumulate);
//       A single-step op's forward (single_step.h): x_gates = x W_ih^T, h_gates (+)= h W_hh^T
//       (accumulate: into x_gates itself), then forward_step's pass; the CPU runs a step of a
//       few rows in one parallel region (cpu/small_step.h).
//       One fused pointwise pass of a step over [a.rows, a.hidden] (the units of `units` when
//       split): the cell math of csrc/cells applied to every element (step_element). A
//       layer-normalized step (a.norm.gamma_hh set) runs row by row (cells/layer_norm.h's
//       step_row), never split.
//
//   static at::Tensor sum_of_products(const at::Tensor& a, const at::Tensor& b);
//       sum over rows of a * b, [N, C] each (row strides may differ) -> [C], accumulated in
//       float32 (float64 for double): the gradients of per-unit weights (γ, peepholes).
//
//   template <class T> static void normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride,
//       const T* gamma, T* v_hat, T* rstd, int64_t hat_stride);
//   template <class T> static void normalize_rows_backward(T* d, int64_t rows, int64_t width,
//       int64_t stride, const T* gamma, const T* v_hat, const T* rstd, int64_t hat_stride);
//       The layer normalization of every row of a matrix in place (a layer-normalized cell's
//       input path, all steps at once), keeping v̂ and 1/σ where set; and its gradient in place.
//
// Plain C++ below (no torch), so the CUDA kernels' headers may include it.
#pragma once

#include <cstdint>

namespace fused_rnn {

// What the driver tells the device about a layer's forward steps before the loop: a step is
// a GEMM [rows, depth] x [depth, gates * hidden], then a pass over [rows, hidden]. `splittable`:
// the step's work can be divided by hidden units, each thread taking the GEMM's columns of
// its units in every gate and then the pass over them (not so for a projected LSTM, whose
// step ends in a GEMM over all units).
struct StepPlan {
  int64_t rows, depth, gates, hidden;
  bool splittable;
};

// The hidden units [begin, end) of a step that one call runs. `split`: other threads run the
// other units of the step at the same time (CpuDevice::for_each_step); otherwise the call
// runs the whole step and may be parallel inside.
struct Units {
  int64_t begin = 0, end = 0;
  bool split = false;
  static Units whole(int64_t hidden) { return {0, hidden, false}; }
};

// body(k, units, sync) for k = 0 .. n_steps - 1 in order, each step whole on the calling
// thread: the executor of devices that do not split steps (sync has nothing to wait for).
template <class Body>
void for_each_whole_step(int64_t n_steps, int64_t hidden, Body&& body) {
  const auto no_sync = [] {};
  for (int64_t k = 0; k < n_steps; ++k) body(k, Units::whole(hidden), no_sync);
}

}  // namespace fused_rnn
