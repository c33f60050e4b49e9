// Math<Vectorized<T>>: the nonlinearities on SIMD vectors (exp through ATen, tanh below),
// so the scalar cell definitions in csrc/cells run 8 or 16 lanes at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../cells/common.h"

namespace fused_rnn {

// tanh of a float vector as x P(x^2) / Q(x^2), P and Q of degree 4, with x clamped to [-9, 9]
// (beyond, tanh is 1 to within 3.1e-8, under half a float's spacing below 1). The coefficients
// minimize the largest relative error on [0, 9] (a least-squares fit of x P - tanh(x) Q,
// reweighted toward its largest errors until they level out, Lawson's method): 2e-8 in exact
// arithmetic, 3.2e-7 after float32 rounding (tests/test_cpu_math.py checks it on a dense grid),
// where Sleef's tanhf u35 promises 3.5 ULP (2.1e-7). Nine FMAs and a division: measured on the
// project's AVX-512 Xeon at 4.7 against Sleef's 11.6 ns per 16 floats, and tanh is the largest
// cost of an LSTM step's pointwise pass (two per unit). NaN stays NaN: the clamp propagates it.
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

// double keeps Sleef's tanh to 3.5 ULP (ATen's Vectorized::tanh is the slower 1-ULP u10): the
// float64 path is the one gradcheck proves against the reference.
#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<double> tanh_vec(const at::vec::Vectorized<double>& x) { return Sleef_tanhd8_u35(x); }
#elif defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<double> tanh_vec(const at::vec::Vectorized<double>& x) { return Sleef_tanhd4_u35(x); }
#else
inline at::vec::Vectorized<double> tanh_vec(const at::vec::Vectorized<double>& x) {
  return x.tanh();  // no Sleef in the scalar build: ATen's own
}
#endif
inline at::vec::Vectorized<float> tanh_vec(const at::vec::Vectorized<float>& x) { return tanh_rational(x); }

template <class T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
  static V tanh(const V& x) { return tanh_vec(x); }
  static V relu(const V& x) { return at::vec::maximum(x, V(T(0))); }
  // NaN in y passes dy through, as torch's threshold_backward does (see Math<float>).
  static V relu_grad(const V& y, const V& dy) { return V::blendv(dy, V(T(0)), y <= V(T(0))); }
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

template <class T>
struct VecIO<T, true> {
  using V = at::vec::Vectorized<float>;
  int64_t count;
  // Through ATen's vector conversions (half a Vectorized<T> is one float vector): at::vec::convert
  // over a float buffer is a scalar loop, and took most of a bf16 step at B = 64, H = 512.
  using Reduced = at::vec::Vectorized<T>;
  V load(const T* p) const { return std::get<0>(at::vec::convert_to_float<T>(Reduced::loadu(p, count))); }
  void store(T* p, const V& v) const { at::vec::convert_from_float<T>(v, v).store(p, count); }
};

}  // namespace fused_rnn
