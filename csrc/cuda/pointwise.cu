// CUDA pointwise passes of one time step: one generic forward and one generic backward kernel,
// each a loop over the step's [rows, hidden] elements that calls the cell's own math
// (csrc/cells, the only place the equations are written) with a CUDA IO policy.
//
// Layout: a 2-D grid, x over hidden units (consecutive threads touch consecutive units, so
// every load and store of a warp is one coalesced row segment; a thread owns 16 bytes of
// consecutive units when every buffer of the step is aligned for it, else one unit), y over
// rows; both dimensions loop grid-stride, so any size runs with a bounded grid. Each element is read and written by the
// thread that owns it only (in-place state updates included), so there are no races and no
// atomics; the bias-gradient reductions are done by the driver (at::sum), deterministically.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "../cells/gru.h"
#include "../cells/layer_norm.h"
#include "../cells/lstm.h"
#include "../cells/rnn.h"
#include "lanes.cuh"
#include "launch.h"

namespace fused_rnn {
namespace {

// The type the math runs in for a storage type T: double for double, float otherwise.
template <class T>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};

// Storage <-> compute conversions (round to nearest even on the way back to fp16/bf16).
template <class T>
struct Convert;
template <>
struct Convert<float> {
  static FUSED_RNN_HD float in(float v) { return v; }
  static FUSED_RNN_HD float out(float v) { return v; }
};
template <>
struct Convert<double> {
  static FUSED_RNN_HD double in(double v) { return v; }
  static FUSED_RNN_HD double out(double v) { return v; }
};
template <>
struct Convert<__half> {
  static FUSED_RNN_HD float in(__half v) { return __half2float(v); }
  static FUSED_RNN_HD __half out(float v) { return __float2half_rn(v); }
};
template <>
struct Convert<__nv_bfloat16> {
  static FUSED_RNN_HD float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  static FUSED_RNN_HD __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

// The IO policies the cells are written against: load(const T*) -> V, store(T*, V).
// ScalarIO: one unit per thread.
template <class T>
struct ScalarIO {
  using V = typename Compute<T>::type;
  static constexpr int kLanes = 1;
  FUSED_RNN_HD V load(const T* p) const { return Convert<T>::in(*p); }
  FUSED_RNN_HD void store(T* p, V v) const { *p = Convert<T>::out(v); }
};

// VectorIO: 16 bytes of consecutive units per thread (4 float, 2 double, 8 half/bfloat16),
// each load and store one 16-byte access. Only for steps whose every pointer and row stride
// is a multiple of 16 bytes (vector_aligned).
template <class T>
struct VectorIO {
  static constexpr int kLanes = 16 / sizeof(T);
  using V = Lanes<typename Compute<T>::type, kLanes>;
  struct alignas(16) Pack {
    T x[kLanes];
  };
  FUSED_RNN_HD V load(const T* p) const {
    const Pack raw = *reinterpret_cast<const Pack*>(p);
    V v;
#pragma unroll
    for (int i = 0; i < kLanes; ++i) v.v[i] = Convert<T>::in(raw.x[i]);
    return v;
  }
  FUSED_RNN_HD void store(T* p, const V& v) const {
    Pack raw;
#pragma unroll
    for (int i = 0; i < kLanes; ++i) raw.x[i] = Convert<T>::out(v.v[i]);
    static_assert(sizeof(Pack) == sizeof(uint4), "a Pack is 16 bytes");
    uint4 bits;
    memcpy(&bits, &raw, sizeof bits);
#if defined(__CUDA_ARCH__)
    // One 16-byte store, always: as a Pack assignment nvcc kept it whole only at a buffer's
    // base and split p + k * H into 4x st.f32 (6x st.u16 ... for halves).
    // tests/ptx_vector_stores.py checks the PTX in `make cuda-check`.
    __stwb(reinterpret_cast<uint4*>(p), bits);
#else
    *reinterpret_cast<uint4*>(p) = bits;
#endif
  }
};

// Whether every access of a step can be a VectorIO access: the units a thread owns start at
// multiples of kLanes, and the cells address element (b, k * H + j) of each buffer, so H, the
// row strides and the base pointers (null ones never accessed) must all be multiples of it.
template <class T>
bool vector_aligned(int64_t hidden, std::initializer_list<const void*> pointers,
                    std::initializer_list<int64_t> strides) {
  constexpr int64_t lanes = VectorIO<T>::kLanes;
  if (hidden % lanes != 0) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  }
  for (int64_t s : strides) {
    if (s % lanes != 0) return false;
  }
  return true;
}
template <class T>
bool vector_aligned(const ForwardStep<T>& a) {
  return vector_aligned<T>(
      a.hidden,
      {a.x_gates, a.bias_ih, a.h_gates, a.bias_hh, a.peephole, a.h_state, a.c_state, a.h_out, a.ws, a.h_prev_save,
       a.masks.zoneout_h, a.masks.zoneout_c, a.masks.dropout_h, a.masks.h_dropped, a.masks.h_dropped_save},
      {a.x_stride, a.h_stride, a.h_state_stride, a.h_out_stride, a.ws_stride, a.masks.zoneout_h_stride,
       a.masks.zoneout_c_stride});
}
template <class T>
bool vector_aligned(const BackwardStep<T>& a) {
  return vector_aligned<T>(
      a.hidden,
      {a.grad_h, a.grad_h_state, a.grad_c_state, a.peephole, a.ws, a.h_prev, a.d_gates_x, a.d_gates_h,
       a.masks.zoneout_h, a.masks.zoneout_c, a.masks.dropout_h, a.masks.grad_h_dropped},
      {a.grad_h_stride, a.grad_h_state_stride, a.ws_stride, a.h_prev_stride, a.d_gates_stride, a.masks.zoneout_h_stride,
       a.masks.zoneout_c_stride});
}

constexpr unsigned kThreads = 256;      // threads per block
constexpr int64_t kMaxGridDim = 65535;  // blocks per grid dimension (y's hardware limit)

struct StepLaunch {
  dim3 grid, block;
};

// Block: a power of two >= 32 threads along hidden (at most kThreads), the rest of the
// kThreads along rows, so small H still fills whole blocks.
inline StepLaunch step_launch(int64_t rows, int64_t hidden) {
  unsigned tx = 32;
  while (tx < kThreads && static_cast<int64_t>(tx) < hidden) tx *= 2;
  const unsigned ty = kThreads / tx;
  const int64_t gx = (hidden + tx - 1) / tx, gy = (rows + ty - 1) / ty;
  StepLaunch l;
  l.block = dim3(tx, ty, 1);
  l.grid = dim3(static_cast<unsigned>(gx < kMaxGridDim ? gx : kMaxGridDim),
                static_cast<unsigned>(gy < kMaxGridDim ? gy : kMaxGridDim), 1);
  return l;
}

// One pass of a step (ForwardStep<T> or BackwardStep<T>): grid-stride over rows and over the
// groups of IO::kLanes units each thread owns.
template <class Cell, class T, class Args, class IO>
__global__ void __launch_bounds__(kThreads) step_kernel(const Args a) {
  using V = typename IO::V;
  const IO io;
  const int64_t groups = a.hidden / IO::kLanes;
  const int64_t b_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  const int64_t g_step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; b < a.rows; b += b_step) {
    for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += g_step) {
      step_element<Cell, V>(a, b, g * IO::kLanes, io);
    }
  }
}

// The Row policy of cells/layer_norm.h on CUDA: one warp per row, lane l owning units
// l, l + 32, ...; sums by warp shuffles. Members are host-device only so that the cells'
// host-device row functions may call them; they run on the device only.
template <class T>
struct WarpRow {
  using IO = ScalarIO<T>;
  using V = typename IO::V;
  using Scalar = V;
  int lane;

  template <class F>
  FUSED_RNN_HD void for_each(int64_t width, F&& f) const {
    for (int64_t j = lane; j < width; j += 32) f(j, IO{});
  }
  FUSED_RNN_HD V masked(const IO&, V v) const { return v; }
  FUSED_RNN_HD Scalar sum(Scalar v) const {
#if defined(__CUDA_ARCH__)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
#endif
    return v;
  }
  FUSED_RNN_HD bool leader() const { return lane == 0; }
  FUSED_RNN_HD void sync() const {
#if defined(__CUDA_ARCH__)
    __syncwarp();
#endif
  }
};

constexpr unsigned kRowWarps = 8;  // rows per block of a row kernel, a warp each

inline dim3 row_grid(int64_t rows) {
  const int64_t blocks = (rows + kRowWarps - 1) / kRowWarps;
  return dim3(static_cast<unsigned>(blocks < kMaxGridDim ? blocks : kMaxGridDim), 1, 1);
}

// The rows of a layer-normalized step, a warp each, grid-stride (every lane of a warp takes
// the same rows, so the shuffles see the whole warp).
template <class Cell, class T, class Args>
__global__ void __launch_bounds__(32 * kRowWarps) step_row_kernel(const Args a) {
  const WarpRow<T> row{static_cast<int>(threadIdx.x)};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; b < a.rows; b += stride) {
    step_row<Cell, typename WarpRow<T>::V>(a, b, row);
  }
}

template <class T>
__global__ void __launch_bounds__(32 * kRowWarps)
    normalize_rows_kernel(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                          int64_t hat_stride) {
  const WarpRow<T> row{static_cast<int>(threadIdx.x)};
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; b < rows; b += step) {
    normalize_row<typename WarpRow<T>::V>(row, v + b * stride, width, gamma, v_hat ? v_hat + b * hat_stride : nullptr,
                                          rstd ? rstd + b * hat_stride : nullptr);
  }
}

template <class T>
__global__ void __launch_bounds__(32 * kRowWarps)
    normalize_rows_backward_kernel(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma, const T* v_hat,
                                   const T* rstd, int64_t hat_stride) {
  const WarpRow<T> row{static_cast<int>(threadIdx.x)};
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; b < rows; b += step) {
    normalize_row_backward<typename WarpRow<T>::V>(row, d + b * stride, width, gamma, v_hat + b * hat_stride,
                                                   rstd + b * hat_stride, d + b * stride);
  }
}

// Shared by both launchers: size check, empty step, row, vector or scalar kernel, launch status.
template <class Cell, class T, class Args>
cudaError_t launch_step(const Args& a, cudaStream_t stream) {
  if (a.rows < 0 || a.hidden < 0) return cudaErrorInvalidValue;
  if (a.rows == 0 || a.hidden == 0) return cudaSuccess;
  if (a.norm.gamma_hh) {
    step_row_kernel<Cell, T, Args><<<row_grid(a.rows), dim3(32, kRowWarps, 1), 0, stream>>>(a);
  } else if (vector_aligned(a)) {
    const StepLaunch l = step_launch(a.rows, a.hidden / VectorIO<T>::kLanes);
    step_kernel<Cell, T, Args, VectorIO<T>><<<l.grid, l.block, 0, stream>>>(a);
  } else {
    const StepLaunch l = step_launch(a.rows, a.hidden);
    step_kernel<Cell, T, Args, ScalarIO<T>><<<l.grid, l.block, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace

template <class Cell, class T>
cudaError_t launch_forward_step(const ForwardStep<T>& step, cudaStream_t stream) {
  return launch_step<Cell, T>(step, stream);
}

template <class Cell, class T>
cudaError_t launch_backward_step(const BackwardStep<T>& step, cudaStream_t stream) {
  return launch_step<Cell, T>(step, stream);
}

template <class T>
cudaError_t launch_normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                                  int64_t hat_stride, cudaStream_t stream) {
  if (rows < 0 || width < 0) return cudaErrorInvalidValue;
  if (rows == 0 || width == 0) return cudaSuccess;
  normalize_rows_kernel<T>
      <<<row_grid(rows), dim3(32, kRowWarps, 1), 0, stream>>>(v, rows, width, stride, gamma, v_hat, rstd, hat_stride);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_normalize_rows_backward(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma,
                                           const T* v_hat, const T* rstd, int64_t hat_stride, cudaStream_t stream) {
  if (rows < 0 || width < 0) return cudaErrorInvalidValue;
  if (rows == 0 || width == 0) return cudaSuccess;
  normalize_rows_backward_kernel<T>
      <<<row_grid(rows), dim3(32, kRowWarps, 1), 0, stream>>>(d, rows, width, stride, gamma, v_hat, rstd, hat_stride);
  return cudaGetLastError();
}

#define FUSED_RNN_INSTANTIATE_NORMALIZE(T)                                                                            \
  template cudaError_t launch_normalize_rows<T>(T*, int64_t, int64_t, int64_t, const T*, T*, T*, int64_t,             \
                                                cudaStream_t);                                                        \
  template cudaError_t launch_normalize_rows_backward<T>(T*, int64_t, int64_t, int64_t, const T*, const T*, const T*, \
                                                         int64_t, cudaStream_t);

FUSED_RNN_INSTANTIATE_NORMALIZE(float)
FUSED_RNN_INSTANTIATE_NORMALIZE(double)
FUSED_RNN_INSTANTIATE_NORMALIZE(__half)
FUSED_RNN_INSTANTIATE_NORMALIZE(__nv_bfloat16)

#define FUSED_RNN_INSTANTIATE_STEP(Cell, T)                                               \
  template cudaError_t launch_forward_step<Cell, T>(const ForwardStep<T>&, cudaStream_t); \
  template cudaError_t launch_backward_step<Cell, T>(const BackwardStep<T>&, cudaStream_t);

#define FUSED_RNN_INSTANTIATE_CELL(Cell)   \
  FUSED_RNN_INSTANTIATE_STEP(Cell, float)  \
  FUSED_RNN_INSTANTIATE_STEP(Cell, double) \
  FUSED_RNN_INSTANTIATE_STEP(Cell, __half) \
  FUSED_RNN_INSTANTIATE_STEP(Cell, __nv_bfloat16)

FUSED_RNN_INSTANTIATE_CELL(LstmCell)
FUSED_RNN_INSTANTIATE_CELL(GruCell)
FUSED_RNN_INSTANTIATE_CELL(RnnTanhCell)
FUSED_RNN_INSTANTIATE_CELL(RnnReluCell)

}  // namespace fused_rnn
