// The floor of a B = 1 recurrent step on the CPU: each thread streams its share of W_hh from
// its own L2 every step, so a step cannot be faster than share / (per-thread L2 read rate).
// This measures that rate the way the split step reads W_hh: each of `threads` threads sums
// its own buffer of `kib` KiB with AVX-512 loads into 8 independent sums (fewer leave the
// loads waiting on the adds), 200 passes, best of 20 runs.
//
//   g++ -O3 -mavx512f -fopenmp bench/l2_bandwidth.cpp -o /tmp/l2 && /tmp/l2 [threads]
//
// Needs AVX-512 (the machines this project benchmarks on); nothing in fused_rnn uses it.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

// Bytes per second read by `threads` threads, each from its own buffer of `kib` KiB.
double read_rate(int threads, size_t kib) {
  const size_t floats = kib * 1024 / sizeof(float);
  double best = 0;
  for (int run = 0; run < 20; ++run) {
    const auto start = std::chrono::steady_clock::now();
    double bytes = 0;
#pragma omp parallel num_threads(threads) reduction(+ : bytes)
    {
      static thread_local std::vector<float> buffer;
      if (buffer.size() != floats) buffer.assign(floats, 1.0f);  // first touch on the reading thread
      __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
      for (int pass = 0; pass < 200; ++pass) {
        for (size_t i = 0; i + 128 <= floats; i += 128) {
          s4 = _mm512_add_ps(s4, _mm512_loadu_ps(&buffer[i + 64]));
          s5 = _mm512_add_ps(s5, _mm512_loadu_ps(&buffer[i + 80]));
          s6 = _mm512_add_ps(s6, _mm512_loadu_ps(&buffer[i + 96]));
          s7 = _mm512_add_ps(s7, _mm512_loadu_ps(&buffer[i + 112]));
          s0 = _mm512_add_ps(s0, _mm512_loadu_ps(&buffer[i]));
          s1 = _mm512_add_ps(s1, _mm512_loadu_ps(&buffer[i + 16]));
          s2 = _mm512_add_ps(s2, _mm512_loadu_ps(&buffer[i + 32]));
          s3 = _mm512_add_ps(s3, _mm512_loadu_ps(&buffer[i + 48]));
        }
      }
      float lanes[16];
      _mm512_storeu_ps(lanes, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)),
                                            _mm512_add_ps(_mm512_add_ps(s4, s5), _mm512_add_ps(s6, s7))));
      if (lanes[0] < 0) std::printf("unreachable\n");  // keeps the sums, and so the loads
      bytes += 200.0 * floats * sizeof(float);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (run >= 3) best = std::max(best, bytes / seconds);  // the first runs fault the pages in
  }
  return best;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  for (size_t kib : {128, 256, 512, 1024, 4096}) {
    std::printf("%5zu KiB per thread, %d threads: %.0f GB/s\n", kib, threads, read_rate(threads, kib) / 1e9);
  }
}
