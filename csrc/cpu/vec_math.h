// Math<Vectorized<T>>: the nonlinearities on SIMD vectors (Sleef exp/tanh through ATen),
// so the scalar cell definitions in csrc/cells run 8 or 16 lanes at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "../cells/common.h"

namespace fused_rnn {

template <class T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
  static V tanh(const V& x) { return x.tanh(); }
  static V relu(const V& x) { return at::vec::maximum(x, V(T(0))); }
  static V relu_grad(const V& y, const V& dy) { return V::blendv(V(T(0)), dy, y > V(T(0))); }
};

// Loads and stores of a vector at a pointer, with `count` < V::size() on a row's tail.
template <class T>
struct VecIO {
  using V = at::vec::Vectorized<T>;
  int64_t count;
  V load(const T* p) const { return count == V::size() ? V::loadu(p) : V::loadu(p, count); }
  void store(T* p, const V& v) const { v.store(p, count); }
};

}  // namespace fused_rnn
