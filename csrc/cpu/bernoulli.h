// Bernoulli masks for the regularizers (fused_rnn/regularizers.py), drawn on the CPU from a
// counter-based generator: element i of a draw is SplitMix64's output for the counter
// seed + (i + 1) * golden (Steele, Lea and Flood 2014: the mixer of a Weyl sequence), its top
// 24 bits a uniform u in [0, 1) with torch.rand's float resolution, and the mask u < p. The
// elements depend on (seed, i) alone, so threads and SIMD lanes split them. torch.rand's CPU
// generator (mt19937, one thread) took 15.3 ms for one [100, 64, 512] zoneout mask on the
// project's 2-core Xeon, where the LSTM forward that uses it takes 150 ms; this, 1.1 ms.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

namespace fused_rnn::cpu {

inline uint64_t splitmix64(uint64_t counter) {
  uint64_t z = counter;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 1 where element i's uniform is below p, else 0: out[i] for i in [0, n).
template <class T>
void bernoulli_mask(T* out, int64_t n, double p, uint64_t seed) {
  constexpr double kScale = 16777216.0;  // 2^24
  // u = bits / 2^24 < p  <=>  bits < ceil(p * 2^24) (bits an integer); p = 1 keeps every element.
  const uint64_t threshold = static_cast<uint64_t>(std::ceil(std::min(std::max(p, 0.0), 1.0) * kScale));
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t bits = splitmix64(seed + static_cast<uint64_t>(i + 1) * kGolden) >> 40;
      out[i] = static_cast<T>(bits < threshold ? 1.0f : 0.0f);
    }
  });
}

// The op (fused_rnn::bernoulli_mask): a new [size] tensor of dtype, Bernoulli(p) from `seed`, a
// one-element int64 CPU tensor (drawn from torch's generator by the caller, so that
// torch.manual_seed reproduces the masks and torch.compile traces the draw).
inline at::Tensor bernoulli_mask_op(const at::Tensor& seed, at::IntArrayRef size, double p, at::ScalarType dtype) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "bernoulli_mask: expected seed to be a one-element int64 CPU tensor, but got ", seed.scalar_type(),
              " of shape ", seed.sizes(), " on ", seed.device());
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "bernoulli_mask: expected p in [0, 1], but got ", p);
  TORCH_CHECK(at::isFloatingType(dtype), "bernoulli_mask: expected a floating dtype, but got ", dtype);
  at::Tensor out = at::empty(size, at::TensorOptions().dtype(dtype));
  const auto s = static_cast<uint64_t>(seed.item<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "bernoulli_mask",
                                  [&] { bernoulli_mask(out.data_ptr<scalar_t>(), out.numel(), p, s); });
  return out;
}

}  // namespace fused_rnn::cpu
