// The CUDA Device (the contract is in device.h): the driver's pointwise steps are the
// kernels of csrc/cuda, launched on the current CUDA stream; GEMMs reach cuBLAS through ATen.
// Included only by ops_cuda.cpp, which is compiled only when the extension is built with CUDA.
//
// Only c10/cuda headers here (no ATen/cuda/CUDAContext.h: it pulls in cuBLAS headers, which
// the build machines lack).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <type_traits>

#include "cuda/launch.h"
#include "device.h"

namespace fused_rnn {

// ATen's scalar types -> the CUDA types the kernels are instantiated for.
template <class T>
struct CudaScalar {
  using type = T;
};
template <>
struct CudaScalar<at::Half> {
  using type = __half;
};
template <>
struct CudaScalar<at::BFloat16> {
  using type = __nv_bfloat16;
};

// ForwardStep<at::Half> and ForwardStep<__half> differ only in the pointee type of their
// pointers (both 16-bit storage of the same format), so the block is copied as bytes.
template <template <class> class Step, class T>
Step<typename CudaScalar<T>::type> as_cuda_step(const Step<T>& a) {
  using U = typename CudaScalar<T>::type;
  static_assert(sizeof(T) == sizeof(U) && alignof(T) == alignof(U), "storage types must match");
  static_assert(sizeof(Step<T>) == sizeof(Step<U>), "step blocks must have the same layout");
  static_assert(std::is_trivially_copyable_v<Step<T>> && std::is_trivially_copyable_v<Step<U>>,
                "step blocks must be trivially copyable");
  Step<U> out;
  std::memcpy(static_cast<void*>(&out), static_cast<const void*>(&a), sizeof(out));
  return out;
}

struct CudaDevice {
  // CUDA dtypes: float64, float32, float16, bfloat16 (fp16/bf16 computed in fp32).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "fused_rnn_cuda", [&] { fn(scalar_t{}); });
  }

  // out = a @ b (+ out when accumulate): cuBLAS through ATen, on the current stream.
  static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }

  // The weight of the per-step GEMMs: cuBLAS takes it as it is. Steps are never split
  // (for_each_step), so every call multiplies all columns.
  class StepWeight {
   public:
    StepWeight(const at::Tensor& b, int64_t /*steps*/, int64_t /*groups*/ = 1) : b_(b) {}
    void gemm(at::Tensor& out, const at::Tensor& a, bool accumulate, const Units& units = {}) const {
      TORCH_INTERNAL_ASSERT(!units.split);
      CudaDevice::gemm(out, a, b_, accumulate);
    }
    at::Tensor product(at::Tensor& out, const at::Tensor& a, const Units& units = {}) const {
      gemm(out, a, false, units);
      return out;
    }

   private:
    at::Tensor b_;
  };

  // One step after another, each a GEMM launch and a kernel launch over the whole step.
  template <class T, class Body>
  static void for_each_step(int64_t n_steps, const StepPlan& plan, Body&& body) {
    for_each_whole_step(n_steps, plan.hidden, body);
  }

  // The op impls hold a device guard for the input's device, so the current stream is that
  // device's. Launches are asynchronous; nothing here waits for the GPU.
  template <class Cell, class T>
  static void forward_step(const ForwardStep<T>& a, const Units& units) {
    TORCH_INTERNAL_ASSERT(!units.split);
    using U = typename CudaScalar<T>::type;
    C10_CUDA_CHECK((launch_forward_step<Cell, U>(as_cuda_step(a), c10::cuda::getCurrentCUDAStream().stream())));
  }

  // A single-step op's forward: the two products (cuBLAS), then the pass.
  template <class Cell, class T>
  static void single_step(const ForwardStep<T>& a, const at::Tensor& x, const at::Tensor& w_ih_t, const at::Tensor& h,
                          const at::Tensor& w_hh_t, at::Tensor& x_gates, at::Tensor& h_gates, bool accumulate) {
    gemm(x_gates, x, w_ih_t, /*accumulate=*/false);
    gemm(h_gates, h, w_hh_t, accumulate);
    forward_step<Cell, T>(a, Units::whole(a.hidden));
  }

  template <class Cell, class T>
  static void backward_step(const BackwardStep<T>& a) {
    using U = typename CudaScalar<T>::type;
    C10_CUDA_CHECK((launch_backward_step<Cell, U>(as_cuda_step(a), c10::cuda::getCurrentCUDAStream().stream())));
  }

  // sum over rows of a * b ([N, C] each), in float32 for half types.
  static at::Tensor sum_of_products(const at::Tensor& a, const at::Tensor& b) {
    const auto acc = at::isReducedFloatingType(a.scalar_type()) ? at::kFloat : a.scalar_type();
    return at::mul(a.to(acc), b.to(acc)).sum(0).to(a.scalar_type());
  }

  // Layer normalization of whole matrices: a warp per row (cuda/pointwise.cu).
  template <class T>
  static void normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                             int64_t hat_stride) {
    using U = typename CudaScalar<T>::type;
    C10_CUDA_CHECK(launch_normalize_rows<U>(
        reinterpret_cast<U*>(v), rows, width, stride, reinterpret_cast<const U*>(gamma), reinterpret_cast<U*>(v_hat),
        reinterpret_cast<U*>(rstd), hat_stride, c10::cuda::getCurrentCUDAStream().stream()));
  }

  template <class T>
  static void normalize_rows_backward(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma, const T* v_hat,
                                      const T* rstd, int64_t hat_stride) {
    using U = typename CudaScalar<T>::type;
    C10_CUDA_CHECK(launch_normalize_rows_backward<U>(
        reinterpret_cast<U*>(d), rows, width, stride, reinterpret_cast<const U*>(gamma),
        reinterpret_cast<const U*>(v_hat), reinterpret_cast<const U*>(rstd), hat_stride,
        c10::cuda::getCurrentCUDAStream().stream()));
  }
};

}  // namespace fused_rnn
