// A few consecutive hidden units per CUDA thread: Lanes<S, N> is the value type the cell math
// (csrc/cells) runs on when one thread owns N units, with the element-wise operators the
// cells use and Math<Lanes> applying the scalar nonlinearities lane by lane. It lets a step's
// loads and stores move 16 bytes at a time (VectorIO in pointwise.cu) without a second copy
// of the cell equations.
#pragma once

#include "../cells/common.h"

namespace fused_rnn {

template <class S, int N>
struct Lanes {
  S v[N];

  Lanes() = default;
  FUSED_RNN_HD explicit Lanes(S s) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = s;
  }

#define FUSED_RNN_LANES_OP(op)                                               \
  friend FUSED_RNN_HD Lanes operator op(const Lanes& x, const Lanes& y) {    \
    Lanes r;                                                                 \
    _Pragma("unroll") for (int i = 0; i < N; ++i) r.v[i] = x.v[i] op y.v[i]; \
    return r;                                                                \
  }
  FUSED_RNN_LANES_OP(+)
  FUSED_RNN_LANES_OP(-)
  FUSED_RNN_LANES_OP(*)
#undef FUSED_RNN_LANES_OP
};

#define FUSED_RNN_LANEWISE(name)                                                  \
  static FUSED_RNN_HD V name(const V& x) {                                        \
    V r;                                                                          \
    _Pragma("unroll") for (int i = 0; i < N; ++i) r.v[i] = Math<S>::name(x.v[i]); \
    return r;                                                                     \
  }

template <class S, int N>
struct Math<Lanes<S, N>> {
  using V = Lanes<S, N>;
  FUSED_RNN_LANEWISE(sigmoid)
  FUSED_RNN_LANEWISE(tanh)
  FUSED_RNN_LANEWISE(relu)
  static FUSED_RNN_HD V relu_grad(const V& y, const V& dy) {
    V r;
#pragma unroll
    for (int i = 0; i < N; ++i) r.v[i] = Math<S>::relu_grad(y.v[i], dy.v[i]);
    return r;
  }
};

#undef FUSED_RNN_LANEWISE

}  // namespace fused_rnn
