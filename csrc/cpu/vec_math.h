// Math<Vectorized<T>>: the nonlinearities on SIMD vectors (exp through ATen, tanh straight from Sleef),
// so the scalar cell definitions in csrc/cells run 8 or 16 lanes at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../cells/common.h"

namespace fused_rnn {

// tanh to 3.5 ULP (Sleef's u35; ATen's Vectorized::tanh is the 1-ULP u10). Measured on the
// project's AVX-512 CPU: 6.0 against 21.4 ns per 16 floats, the largest cost of an LSTM step's
// pointwise pass; 3.5 ULP is a relative error under 5e-7 in float32.
#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<float> tanh_u35(const at::vec::Vectorized<float>& x) { return Sleef_tanhf16_u35(x); }
inline at::vec::Vectorized<double> tanh_u35(const at::vec::Vectorized<double>& x) { return Sleef_tanhd8_u35(x); }
#elif defined(CPU_CAPABILITY_AVX2)
inline at::vec::Vectorized<float> tanh_u35(const at::vec::Vectorized<float>& x) { return Sleef_tanhf8_u35(x); }
inline at::vec::Vectorized<double> tanh_u35(const at::vec::Vectorized<double>& x) { return Sleef_tanhd4_u35(x); }
#else
template <class T>
at::vec::Vectorized<T> tanh_u35(const at::vec::Vectorized<T>& x) {
  return x.tanh();  // no Sleef in the scalar build: ATen's own
}
#endif

template <class T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
  static V tanh(const V& x) { return tanh_u35(x); }
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
