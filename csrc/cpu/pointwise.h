// The CPU side of a time step: one pass over [rows, H], rows in parallel, H in SIMD vectors.
#pragma once
#include <ATen/Config.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <optional>
#include <type_traits>
#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

namespace at::native {
// ATen's oneDNN matmul (exported by libtorch_cpu, declared in ATen/native/mkldnn/Matmul.h,
// which the wheels do not ship): result = beta * result + alpha * mat1 @ mat2.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

#include "packed_gemm.h"
#include "row_dot_gemm.h"
#include "spin_barrier.h"
#include "vec_math.h"

namespace fused_rnn {

struct CpuDevice {
  // CPU dtypes: float64, float32, and bfloat16 / float16 (math in float32, see VecIO; their
  // GEMMs are ATen's).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st, "fused_rnn_cpu", [&] { fn(scalar_t{}); });
  }

  // out = a @ b (+ out when accumulate). float32 products of 5+ rows go to oneDNN's matmul:
  // on this project's CPUs (AMD EPYC, AVX-512) it runs 2.2x faster than MKL's sgemm, which
  // picks an AVX2 path on AMD. Products of a few rows by a transposed weight (x W^T, h W^T)
  // are dot products of contiguous rows (row_dot_gemm.h), where MKL's sgemv is slow on AMD
  // and oneDNN is slow too; MKL keeps the rest.
  static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (a.size(1) == 0) {  // an empty sum (B = 0: dW = dG^T x over no rows); oneDNN writes nothing
      if (!accumulate) out.zero_();
      return;
    }
    if (a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && at::hasMKLDNN()) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    } else if (a.scalar_type() == at::kFloat && RowDotGemm<float>::fits(out, a, b)) {
      RowDotGemm<float>::multiply(out, a, b, accumulate);
    } else if (a.scalar_type() == at::kDouble && RowDotGemm<double>::fits(out, a, b)) {
      RowDotGemm<double>::multiply(out, a, b, accumulate);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
  static constexpr int64_t kMinOneDnnRows = 5;

  // The weight b of a GEMM that every step repeats (out (+)= a @ b, a = that step's rows).
  // Steps multiply a copy of b packed once per op call (packed_gemm.h): oneDNN and MKL
  // re-read b in its own layout on every call, which costs more than the arithmetic at a
  // few rows and, measured at B = 64, H = 512, still 10% at many. A sequence shorter than
  // kMinPackedSteps does not repay the packing and calls gemm().
  // `groups`: b's columns are that many equal groups (the gates of W_hh^T), packed so that a
  // thread of a split step multiplies the columns of its units in every group (Units).
  class StepWeight {
   public:
    static constexpr int64_t kMinPackedSteps = 4;

    explicit StepWeight(const at::Tensor& b, int64_t steps, int64_t groups = 1) : b_(b) {
      if (steps < kMinPackedSteps) return;
      if (b.scalar_type() == at::kFloat) f32_.emplace(b, groups);
      if (b.scalar_type() == at::kDouble) f64_.emplace(b, groups);
    }

    void gemm(at::Tensor& out, const at::Tensor& a, bool accumulate, const Units& units = {}) const {
      const bool rows_contiguous = a.stride(1) == 1 && out.stride(1) == 1;
      if (units.split) {  // for_each_step splits only packed float/double steps
        TORCH_INTERNAL_ASSERT((f32_ || f64_) && rows_contiguous);
        if (f32_) f32_->multiply_units(out, a, accumulate, units.begin, units.end);
        if (f64_) f64_->multiply_units(out, a, accumulate, units.begin, units.end);
      } else if (f32_ && rows_contiguous) {
        f32_->multiply(out, a, accumulate);
      } else if (f64_ && rows_contiguous) {
        f64_->multiply(out, a, accumulate);
      } else {
        CpuDevice::gemm(out, a, b_, accumulate);
      }
    }

   private:
    at::Tensor b_;
    std::optional<PackedWeight<float>> f32_;
    std::optional<PackedWeight<double>> f64_;
  };

  // Runs body(k, units, sync) for the steps k = 0 .. n_steps - 1 in order.
  //
  // A step of a few rows is split over the threads by hidden units (when plan.splittable),
  // inside ONE parallel region for the whole sequence: every step, each thread runs the GEMM
  // columns of the same units in every gate, then the pass over those units, and sync() is
  // a barrier among the threads (the body calls it between the GEMM and the pass, which
  // overwrites the h that every thread's GEMM reads; the loop calls it after each step).
  // Each thread's share of W_hh stays in its own L2. Whole steps instead fork and join the
  // threads twice a step and, at a few rows, run the pass on one thread. Measured at B = 1,
  // H = 256, T = 100 on 2 threads, whole -> split: LSTM 0.95 -> 0.78 ms, GRU 1.29 -> 0.59 ms,
  // RNN 0.47 -> 0.23 ms; at B = 8 (LSTM) 3.1 -> 2.6 ms; at B = 16 no gain, hence kMaxSplitRows.
  // Other steps run whole on this thread, their GEMM and pass parallel inside.
  template <class T, class Body>
  static void for_each_step(int64_t n_steps, const StepPlan& plan, Body&& body) {
    at::internal::lazy_init_num_threads();  // this thread's OpenMP team size, as ATen sets it
    if constexpr (!std::is_same_v<T, float> && !std::is_same_v<T, double>) {
      return for_each_whole_step(n_steps, plan.hidden, body);  // no packed weight to split
    }
    const int64_t lanes = at::vec::Vectorized<T>::size();
    const int64_t workers = split_workers(n_steps, plan, lanes);
    if (workers <= 1) return for_each_whole_step(n_steps, plan.hidden, body);
#if AT_PARALLEL_OPENMP
    SpinBarrier barrier;
    std::exception_ptr error;
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
    // No num_threads clause (see ATen's ParallelOpenMP.h): threads past `team` sit it out.
#pragma omp parallel
    {
      const int64_t team = std::min<int64_t>(workers, omp_get_num_threads());
      const int64_t id = omp_get_thread_num();
      if (id < team) {
        const c10::ParallelGuard guard(true);  // at::parallel_for inside runs inline
        const int64_t panels = (plan.hidden + lanes - 1) / lanes;
        const int64_t begin = std::min(plan.hidden, id * panels / team * lanes);
        const int64_t end = std::min(plan.hidden, (id + 1) * panels / team * lanes);
        const Units units{begin, end, true};
        const auto sync = [&] { barrier.wait(team); };
        try {
          for (int64_t k = 0; k < n_steps && !barrier.aborted(); ++k) {
            body(k, units, sync);
            sync();
          }
        } catch (...) {
          if (!failed.test_and_set()) error = std::current_exception();
          barrier.abort();
        }
      }
    }
    if (error) std::rethrow_exception(error);
#endif
  }
  // Splitting pays while a step is small: up to kMaxSplitRows rows, at least kMinSplitFmas
  // multiply-adds of GEMM per thread, a whole number of SIMD vectors of units each.
  static constexpr int64_t kMaxSplitRows = 8;
  static constexpr int64_t kMinSplitFmas = 16384;
  static int64_t split_workers(int64_t n_steps, const StepPlan& plan, int64_t lanes) {
#if AT_PARALLEL_OPENMP
    if (!plan.splittable || plan.rows > kMaxSplitRows || n_steps < StepWeight::kMinPackedSteps ||
        at::in_parallel_region()) {
      return 1;
    }
    const int64_t fmas = plan.rows * plan.depth * plan.gates * plan.hidden;
    const int64_t panels = (plan.hidden + lanes - 1) / lanes;
    return std::min({int64_t(at::get_num_threads()), panels, std::max<int64_t>(1, fmas / kMinSplitFmas)});
#else
    return 1;  // the barrier needs every worker running at once, which only OpenMP's team promises
#endif
  }

  // Rows per task: about 2048 elements, a few microseconds of transcendentals, so a step
  // of a few rows stays on the calling thread and B = 64, H = 512 uses every thread.
  static int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(hidden, 1)); }

  // The rows a step reads that were written long before it (forward: the input projection;
  // backward: the workspace) come from memory, not cache: at B = 64, H = 256 the pass
  // stalled on those loads for most of its time. Rows kPrefetchRows ahead are prefetched.
  static constexpr int64_t kPrefetchRows = 2;
  static void prefetch(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
  }
  template <class Cell, class T>
  static void prefetch_row(const ForwardStep<T>& a, int64_t b) {
    prefetch(a.x_gates + b * a.x_stride, Cell::kGates * a.hidden * int64_t(sizeof(T)));
  }
  template <class Cell, class T>
  static void prefetch_row(const BackwardStep<T>& a, int64_t b) {
    prefetch(a.ws + b * a.ws_stride, Cell::kWorkspace * a.hidden * int64_t(sizeof(T)));
  }

  // One pass of a step (ForwardStep or BackwardStep): over [rows, hidden], rows in parallel,
  // or, when the step is split, over all rows of this thread's units (a few rows, from cache:
  // nothing to prefetch).
  template <class Cell, class T, class Args>
  static void run_step(const Args& a, const Units& units) {
    using V = typename VecIO<T>::V;
    const int64_t u0 = units.split ? units.begin : 0, u1 = units.split ? units.end : a.hidden;
    at::parallel_for(0, a.rows, grain(a.hidden), [&](int64_t begin, int64_t end) {
      const bool prefetching = !units.split;
      for (int64_t b = begin; prefetching && b < std::min(end, begin + kPrefetchRows); ++b) prefetch_row<Cell>(a, b);
      for (int64_t b = begin; b < end; ++b) {
        if (prefetching && b + kPrefetchRows < end) prefetch_row<Cell>(a, b + kPrefetchRows);
        for (int64_t j = u0; j < u1; j += V::size()) {
          step_element<Cell, V>(a, b, j, VecIO<T>{std::min<int64_t>(V::size(), u1 - j)});
        }
      }
    });
  }

  template <class Cell, class T>
  static void forward_step(const ForwardStep<T>& a, const Units& units) {
    run_step<Cell, T>(a, units);
  }

  template <class Cell, class T>
  static void backward_step(const BackwardStep<T>& a) {
    run_step<Cell, T>(a, Units::whole(a.hidden));
  }
};

}  // namespace fused_rnn
