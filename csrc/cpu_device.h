// The CPU Device (the contract is in device.h): each member hands over to the file of its job
// in csrc/cpu/ (GEMM routing, packed step weights, the split-step loop, the pointwise pass,
// the single-step forward).
#pragma once
#include <ATen/Dispatch.h>

#include "cpu/column_dot.h"
#include "cpu/gemm.h"
#include "cpu/pointwise.h"
#include "cpu/small_step.h"
#include "cpu/split_steps.h"
#include "cpu/step_weight.h"
#include "device.h"

namespace fused_rnn {

struct CpuDevice {
  // CPU dtypes: float64, float32, and bfloat16 / float16 (math in float32, see VecIO; their
  // GEMMs are ATen's).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "fused_rnn_cpu", [&] { fn(scalar_t{}); });
  }

  static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    cpu::gemm(out, a, b, accumulate);
  }

  using StepWeight = cpu::StepWeight;

  template <class T, class Body>
  static void for_each_step(int64_t n_steps, const StepPlan& plan, Body&& body) {
    cpu::for_each_step<T>(n_steps, plan, body);
  }

  template <class Cell, class T>
  static void forward_step(const ForwardStep<T>& a, const Units& units) {
    cpu::run_step<Cell, T>(a, units);
  }

  template <class Cell, class T>
  static void backward_step(const BackwardStep<T>& a) {
    cpu::run_step<Cell, T>(a, Units::whole(a.hidden));
  }

  static at::Tensor sum_of_products(const at::Tensor& a, const at::Tensor& b) {
    at::Tensor out;
    dispatch(a.scalar_type(), "sum_of_products", [&](auto tag) { out = cpu::column_dot<decltype(tag)>(a, b); });
    return out;
  }

  template <class T>
  static void normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                             int64_t hat_stride) {
    cpu::normalize_rows(v, rows, width, stride, gamma, v_hat, rstd, hat_stride);
  }

  template <class T>
  static void normalize_rows_backward(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma, const T* v_hat,
                                      const T* rstd, int64_t hat_stride) {
    cpu::normalize_rows_backward(d, rows, width, stride, gamma, v_hat, rstd, hat_stride);
  }

  template <class Cell, class T>
  static void single_step(const ForwardStep<T>& a, const at::Tensor& x, const at::Tensor& w_ih_t, const at::Tensor& h,
                          const at::Tensor& w_hh_t, at::Tensor& x_gates, at::Tensor& h_gates, bool accumulate) {
    cpu::single_step<Cell, T>(a, x, w_ih_t, h, w_hh_t, x_gates, h_gates, accumulate);
  }
};

}  // namespace fused_rnn
