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

  // b: [k, n], any strides (W^T as a view of W included).
  explicit PackedWeight(const at::Tensor& b)
      : k_(b.size(0)), n_(b.size(1)), panels_((b.size(1) + kLanes - 1) / kLanes) {
    packed_ = at::empty({panels_ * k_ * kLanes}, b.options());
    const T* src = b.data_ptr<T>();
    const int64_t sk = b.stride(0), sn = b.stride(1), k = k_, n = n_;
    T* dst = packed_.data_ptr<T>();
    at::parallel_for(0, panels_, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c0 = p * kLanes;
        pack_panel(src + c0 * sn, sk, sn, k, std::min<int64_t>(kLanes, n - c0), dst + p * k * kLanes);
      }
    });
  }

  // out[m, n] (+)= a[m, k] @ b. out and a: rows with unit column stride.
  void multiply(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
    const int64_t m = a.size(0);
    const T* a_ptr = a.data_ptr<T>();
    const T* w = packed_.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const int64_t lda = a.stride(0), ldo = out.stride(0);
    if (k_ == 0) {  // an empty sum
      if (!accumulate) out.zero_();
      return;
    }
    // Split panels evenly over the threads when the step is worth it (about 16k FMAs each).
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, m * k_ * kLanes));
    const int64_t group = std::max<int64_t>(1, kGroupBytes / (std::min(k_, kDepth) * kLanes * int64_t(sizeof(T))));
    at::parallel_for(0, panels_, grain, [&](int64_t p0, int64_t p1) {
      // A group of panels, one depth slice deep, stays in L2 while every block of rows
      // passes over it; a block of rows of `a`, one slice deep, stays in L1.
      for (int64_t g0 = p0; g0 < p1; g0 += group) {
        const int64_t g1 = std::min(p1, g0 + group);
        for (int64_t k0 = 0; k0 < k_; k0 += kDepth) {
          const Depth depth{k0, std::min(k_, k0 + kDepth), accumulate || k0 > 0};
          for (int64_t r = 0; r < m; r += kMaxRows) {
            const int64_t rows = std::min<int64_t>(kMaxRows, m - r);
            row_block(rows, a_ptr + r * lda, lda, w, o + r * ldo, ldo, g0, g1, depth);
          }
        }
      }
    });
  }

  // Rows per register block; larger steps loop over blocks.
  static constexpr int kMaxRows = 8;

 private:
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
  void panels(const T* a, int64_t lda, const T* w, T* o, int64_t ldo, int64_t p0, int64_t p1,
              const Depth& d) const {
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
      const int64_t col = (p + q) * kLanes;
      const int64_t count = std::min<int64_t>(kLanes, n_ - col);
      for (int r = 0; r < MR; ++r) {
        T* dst = o + r * ldo + col;
        V v = acc[r][q];
        if (d.accumulate) v = v + (count == kLanes ? V::loadu(dst) : V::loadu(dst, count));
        v.store(dst, count);
      }
    }
  }

  int64_t k_, n_, panels_;
  at::Tensor packed_;
};

}  // namespace fused_rnn
