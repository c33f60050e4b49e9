// Math<Vectorized<T>>: the nonlinearities on SIMD vectors (exp through ATen, tanh below),
// so the scalar cell definitions in csrc/cells run 8 or 16 lanes at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "../cells/common.h"

namespace fused_rnn {

// tanh to 3.5 ULP (Sleef's u35; ATen's Vectorized::tanh is the 1-ULP u10). Measured on the
// project's AVX-512 CPU: 6.0 against 21.4 ns per 16 floats, the largest cost of an LSTM step's
// pointwise pass; 3.5 ULP is a relative error under 4.2e-7 in float32.
#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<float> tanh_vec(const at::vec::Vectorized<float>& x) { return Sleef_tanhf16_u35(x); }
inline at::vec::Vectorized<double> tanh_vec(const at::vec::Vectorized<double>& x) { return Sleef_tanhd8_u35(x); }
#elif defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> tanh_vec(const at::vec::Vectorized<float>& x) { return Sleef_tanhf8_u35(x); }
inline at::vec::Vectorized<double> tanh_vec(const at::vec::Vectorized<double>& x) { return Sleef_tanhd4_u35(x); }
#else
template <class T>
at::vec::Vectorized<T> tanh_vec(const at::vec::Vectorized<T>& x) {
  return x.tanh();  // no Sleef in the scalar build: ATen's own
}
#endif

template <class T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
  static V tanh(const V& x) { return tanh_vec(x); }
  static V relu(const V& x) { return at::vec::maximum(x, V(T(0))); }
  // NaN in y passes dy through, as torch's threshold_backward does (see Math<float>).
  static V relu_grad(const V& y, const V& dy) { return V::blendv(dy, V(T(0)), y <= V(T(0))); }
};

// tanh of a float vector as x P(x^2) / Q(x^2), P and Q of degree 4, x clamped to [-9, 9]
// (beyond, tanh is 1 to within 3.1e-8). The coefficients minimize the largest relative error
// on [0, 9] (least squares of x P - tanh(x) Q, reweighted toward the largest errors until they
// level out: Lawson's method; docs/fit_tanh.py derives them): 2e-8 in exact arithmetic; after
// float32 rounding 3.2e-7 at most (3.9e-7 in the scalar build, whose fmadd rounds twice) and
// 4.7e-8 on average, against Sleef's u35 at 2.2e-7 and 1.8e-8. Nine FMAs and a division: 4.7
// against 11.6 ns per 16 floats on the project's AVX-512 Xeon. Float32 storage keeps Sleef's:
// with this one, a float32 layer-normalized cell of one unit reached 2.06x plain PyTorch's
// gradient error, over the 2x bound of tests/test_ops_numerics.py::test_tiny_sizes.
// bfloat16 and float16 storage round to 2^-9 and 2^-11, 10^4 times this error, and take it
// (tests/test_cpu_math.py checks both). NaN stays NaN: the clamp propagates it.
inline at::vec::Vectorized<float> tanh_rational(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  x = at::vec::clamp(x, V(-9.0f), V(9.0f));
  const V t = x * x;
  V p(1.34193141e-08f);
  p = at::vec::fmadd(p, t, V(2.06609802e-05f));
  p = at::vec::fmadd(p, t, V(3.49898350e-03f));
  p = at::vec::fmadd(p, t, V(1.33839714e-01f));
  p = at::vec::fmadd(p, t, V(1.0f));
  V q(7.80454462e-07f);
  q = at::vec::fmadd(q, t, V(3.29101443e-04f));
  q = at::vec::fmadd(q, t, V(2.58901637e-02f));
  q = at::vec::fmadd(q, t, V(4.67172929e-01f));
  q = at::vec::fmadd(q, t, V(1.0f));
  return x * p / q;
}

// The nonlinearities of a cell whose values are stored in bfloat16 or float16 (CellMath).
struct ReducedStorageMath : Math<at::vec::Vectorized<float>> {
  static at::vec::Vectorized<float> tanh(const at::vec::Vectorized<float>& x) { return tanh_rational(x); }
};
template <>
struct CellMathFor<at::vec::Vectorized<float>, c10::BFloat16> {
  using type = ReducedStorageMath;
};
template <>
struct CellMathFor<at::vec::Vectorized<float>, c10::Half> {
  using type = ReducedStorageMath;
};

// Loads and stores of a vector at a pointer, with `count` < V::size() on a row's tail. V is
// the vector the cell math runs on: Vectorized<T> for float and double; for bfloat16 and
// float16 storage it is float (docs/DESIGN.md §3: float32 inside the pointwise math), converted on
// load and store.
template <class T, bool kReduced = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>>
struct VecIO {
  using V = at::vec::Vectorized<T>;
  int64_t count;
  V load(const T* p) const { return count == V::size() ? V::loadu(p) : V::loadu(p, count); }
  void store(T* p, const V& v) const { v.store(p, count); }
};

// One float vector of bfloat16 / float16 values at p (count of them), converted in registers.
// ATen's Vectorized<BFloat16> holds two float vectors' worth, so loading or storing one float
// vector through it is always a partial access, which ATen does through a stack buffer and
// memcpy, and its store converts both halves: measured on the project's Xeon, those were a
// third of a bf16 LSTM step's pass. AVX-512 (BW, VL) masks the tail in the load and store
// themselves; AVX2 converts 8 values in registers and copies only a partial tail.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// One float vector's worth of T's bits as floats, and back (ATen's in-register
// conversions, overloaded by register width).
template <class T, class Floats, class Bits>
inline Floats to_floats(const Bits& bits) {
  Floats v;
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    at::vec::cvtbf16_fp32(bits, v);
  } else {
    at::vec::cvtfp16_fp32(bits, v);
  }
  return v;
}
template <class T, class Floats>
inline auto from_floats(const Floats& v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return at::vec::cvtfp32_bf16(v);
  } else {
    return at::vec::cvtfp32_fp16(v);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
inline __mmask16 first_lanes(int64_t count) { return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1); }
template <class T>
inline at::vec::Vectorized<float> load_reduced(const T* p, int64_t count) {
  return to_floats<T, __m512>(_mm256_maskz_loadu_epi16(first_lanes(count), p));
}
template <class T>
inline void store_reduced(T* p, const at::vec::Vectorized<float>& v, int64_t count) {
  _mm256_mask_storeu_epi16(p, first_lanes(count), from_floats<T>(__m512(v)));
}
#elif defined(CPU_CAPABILITY_AVX2)
template <class T>
inline at::vec::Vectorized<float> load_reduced(const T* p, int64_t count) {
  if (count >= 8) return to_floats<T, __m256>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  alignas(16) T tail[8] = {};
  std::copy(p, p + count, tail);
  return to_floats<T, __m256>(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)));
}
template <class T>
inline void store_reduced(T* p, const at::vec::Vectorized<float>& v, int64_t count) {
  const __m128i bits = from_floats<T>(__m256(v));
  if (count >= 8) return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bits);
  alignas(16) T tail[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(tail), bits);
  std::copy(tail, tail + count, p);
}
#else
// The scalar build: through ATen's conversions (half a Vectorized<T> is one float vector).
template <class T>
inline at::vec::Vectorized<float> load_reduced(const T* p, int64_t count) {
  return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count)));
}
template <class T>
inline void store_reduced(T* p, const at::vec::Vectorized<float>& v, int64_t count) {
  at::vec::convert_from_float<T>(v, v).store(p, count);
}
#endif

template <class T>
struct VecIO<T, true> {
  using V = at::vec::Vectorized<float>;
  int64_t count;
  V load(const T* p) const { return load_reduced(p, count); }
  void store(T* p, const V& v) const { store_reduced(p, v, count); }
};

}  // namespace fused_rnn
