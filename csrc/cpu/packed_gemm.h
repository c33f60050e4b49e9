// out (+)= a @ b where b is the same for every time step, with b packed once per op call.
//
// A recurrent step multiplies B rows (B the batch; 1 in streaming inference) by the same
// weight T times. oneDNN and MKL treat every call as a new problem and re-read W in its
// original layout: at B <= 16 that costs more than the step's arithmetic, and at B = 64,
// H = 512 oneDNN's matmul still took 10% longer than this (367 against 325 us a step). Here
// b [k, n] is copied once into panels of one SIMD vector of columns, panel p =
// b[:, p*L : p*L + L] stored [k][L] contiguous, so a step reads its share of W as a few
// sequential streams, broadcasts one element of `a` against a whole panel row, and needs no
// horizontal sums. Threads always get the same panels (at::parallel_for's static split), so
// each core's share of W stays in its own L2 from one step to the next when it fits.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace fused_rnn {

template <class T>
class PackedWeight {
 public:
  using V = at::vec::Vectorized<T>;
  static constexpr int64_t kLanes = V::size();

  // b: [k, n], any strides (W^T as a view of W included), n = groups * width. Each group of
  // columns (a gate of W_hh^T) gets its own panels, so the units [u0, u1) of every gate are
  // whole panels when u0 and u1 are multiples of kLanes (multiply_units).
  explicit PackedWeight(const at::Tensor& b, int64_t groups = 1)
      : k_(b.size(0)),
        groups_(groups),
        width_(b.size(1) / groups),
        group_panels_((width_ + kLanes - 1) / kLanes),
        panels_(groups * group_panels_) {
    TORCH_INTERNAL_ASSERT(width_ * groups == b.size(1), "PackedWeight: ", b.size(1), " columns in ", groups, " groups");
    packed_ = at::empty({panels_ * k_ * kLanes}, b.options());
    const T* src = b.data_ptr<T>();
    const int64_t sk = b.stride(0), sn = b.stride(1), k = k_;
    T* dst = packed_.data_ptr<T>();
    at::parallel_for(0, panels_, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        pack_panel(src + first_column(p) * sn, sk, sn, k, columns(p), dst + p * k * kLanes);
      }
    });
  }

  // out[m, n] (+)= a[m, k] @ b, the panels split over the threads. out and a: rows with unit
  // column stride.
  void multiply(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
    const Operands x = operands(out, a, accumulate);
    if (k_ == 0) return empty_sum(out, accumulate);
    // Split panels evenly over the threads when the step is worth it (about 16k FMAs each).
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, x.m * k_ * kLanes));
    at::parallel_for(0, panels_, grain, [&](int64_t p0, int64_t p1) { multiply_panels(x, p0, p1); });
  }

  // The same for the columns of units [u0, u1) of every group only, on the calling thread.
  // u0 must be a multiple of kLanes (u1 too, unless it is the width).
  void multiply_units(const at::Tensor& out, const at::Tensor& a, bool accumulate, int64_t u0, int64_t u1) const {
    TORCH_INTERNAL_ASSERT(k_ > 0 && u0 % kLanes == 0 && (u1 % kLanes == 0 || u1 == width_) && u0 <= u1 && u1 <= width_);
    const Operands x = operands(out, a, accumulate);
    const int64_t q0 = u0 / kLanes, q1 = (u1 + kLanes - 1) / kLanes;
    for (int64_t g = 0; g < groups_; ++g) {
      multiply_panels(x, g * group_panels_ + q0, g * group_panels_ + q1);
    }
  }

  // Rows per register block; larger steps loop over blocks.
  static constexpr int kMaxRows = 8;

 private:
  struct Operands {
    int64_t m;
    const T* a;
    int64_t lda;
    T* o;
    int64_t ldo;
    bool accumulate;
  };
  static Operands operands(const at::Tensor& out, const at::Tensor& a, bool accumulate) {
    return {a.size(0), a.data_ptr<T>(), a.stride(0), out.data_ptr<T>(), out.stride(0), accumulate};
  }
  static void empty_sum(const at::Tensor& out, bool accumulate) {
    if (!accumulate) out.zero_();
  }

  // Panel p: columns [first_column(p), first_column(p) + columns(p)) of b.
  int64_t first_column(int64_t p) const { return (p / group_panels_) * width_ + (p % group_panels_) * kLanes; }
  int64_t columns(int64_t p) const { return std::min<int64_t>(kLanes, width_ - (p % group_panels_) * kLanes); }

  // Panels [p0, p1) of out: a group of panels, one depth slice deep, stays in L2 while every
  // block of rows passes over it; a block of rows of `a`, one slice deep, stays in L1.
  void multiply_panels(const Operands& x, int64_t p0, int64_t p1) const {
    const T* w = packed_.data_ptr<T>();
    const int64_t group = std::max<int64_t>(1, kGroupBytes / (std::min(k_, kDepth) * kLanes * int64_t(sizeof(T))));
    for (int64_t g0 = p0; g0 < p1; g0 += group) {
      const int64_t g1 = std::min(p1, g0 + group);
      for (int64_t k0 = 0; k0 < k_; k0 += kDepth) {
        const Depth depth{k0, std::min(k_, k0 + kDepth), x.accumulate || k0 > 0};
        for (int64_t r = 0; r < x.m; r += kMaxRows) {
          const int64_t rows = std::min<int64_t>(kMaxRows, x.m - r);
          row_block(rows, x.a + r * x.lda, x.lda, w, x.o + r * x.ldo, x.ldo, g0, g1, depth);
        }
      }
    }
  }

  // panel[kk][c] = src[kk * sk + c * sn] for c < cols, zero past them.
  static void pack_panel(const T* src, int64_t sk, int64_t sn, int64_t k, int64_t cols, T* panel) {
    if (cols < kLanes) std::fill(panel, panel + k * kLanes, T(0));
    if (sn == 1) {
      for (int64_t kk = 0; kk < k; ++kk) std::copy(src + kk * sk, src + kk * sk + cols, panel + kk * kLanes);
      return;
    }
    if (sk == 1) {  // b = W^T: the panel is a transpose of `cols` rows of W (SIMD in ATen)
      at::vec::transpose_mxn<T>(src, sn, panel, kLanes, static_cast<int>(cols), static_cast<int>(k));
      return;
    }
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t c = 0; c < cols; ++c) panel[kk * kLanes + c] = src[kk * sk + c * sn];
    }
  }

  // Cache blocking (see multiply): bytes of panels per group, depth of a slice of k.
  static constexpr int64_t kGroupBytes = 256 * 1024;
  static constexpr int64_t kDepth = 512;
  // The slice [k0, k1) of the sum this pass adds; out is overwritten unless accumulate.
  struct Depth {
    int64_t k0, k1;
    bool accumulate;
  };
  // Accumulators per block: the vector registers minus one for `a`'s broadcast and a few
  // for the panel rows.
  static constexpr int kRegisters = sizeof(V) >= 64 ? 32 : 16;
  template <int MR>
  static constexpr int kPanels = std::clamp((kRegisters - 4) / MR, 1, 8);

  void row_block(int64_t rows, const T* a, int64_t lda, const T* w, T* o, int64_t ldo, int64_t p0, int64_t p1,
                 const Depth& d) const {
    switch (rows) {
      case 1: return panels<1>(a, lda, w, o, ldo, p0, p1, d);
      case 2: return panels<2>(a, lda, w, o, ldo, p0, p1, d);
      case 3: return panels<3>(a, lda, w, o, ldo, p0, p1, d);
      case 4: return panels<4>(a, lda, w, o, ldo, p0, p1, d);
      case 5: return panels<5>(a, lda, w, o, ldo, p0, p1, d);
      case 6: return panels<6>(a, lda, w, o, ldo, p0, p1, d);
      case 7: return panels<7>(a, lda, w, o, ldo, p0, p1, d);
      default: return panels<8>(a, lda, w, o, ldo, p0, p1, d);
    }
  }

  template <int MR>
  void panels(const T* a, int64_t lda, const T* w, T* o, int64_t ldo, int64_t p0, int64_t p1, const Depth& d) const {
    constexpr int NP = kPanels<MR>;
    int64_t p = p0;
    for (; p + NP <= p1; p += NP) tile<MR, NP>(a, lda, w, o, ldo, p, d);
    for (; p < p1; ++p) tile<MR, 1>(a, lda, w, o, ldo, p, d);
  }

  // MR rows x NP panels of out, accumulated in registers over the depth slice.
  template <int MR, int NP>
  void tile(const T* a, int64_t lda, const T* w, T* o, int64_t ldo, int64_t p, const Depth& d) const {
    V acc[MR][NP];
    for (int r = 0; r < MR; ++r) {
      for (int q = 0; q < NP; ++q) acc[r][q] = V(T(0));
    }
    const T* panel = w + p * k_ * kLanes;
    const int64_t panel_stride = k_ * kLanes;
    for (int64_t kk = d.k0; kk < d.k1; ++kk) {
      V b[NP];
      for (int q = 0; q < NP; ++q) b[q] = V::loadu(panel + q * panel_stride + kk * kLanes);
      for (int r = 0; r < MR; ++r) {
        const V x(a[r * lda + kk]);
        for (int q = 0; q < NP; ++q) acc[r][q] = at::vec::fmadd(x, b[q], acc[r][q]);
      }
    }
    for (int q = 0; q < NP; ++q) {
      const int64_t col = first_column(p + q);
      const int64_t count = columns(p + q);
      for (int r = 0; r < MR; ++r) {
        T* dst = o + r * ldo + col;
        V v = acc[r][q];
        if (d.accumulate) v = v + (count == kLanes ? V::loadu(dst) : V::loadu(dst, count));
        v.store(dst, count);
      }
    }
  }

  int64_t k_, groups_, width_, group_panels_, panels_;
  at::Tensor packed_;
};

}  // namespace fused_rnn
