// Read bandwidth of this machine: every thread sums its part of a buffer larger than the caches
// with wide vector loads and independent accumulators, so only memory limits it. The ceiling
// for any decode step that streams weights.
#pragma once

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

namespace shoal::bench {

inline double read_bandwidth_gbs(int64_t bytes = int64_t(2) << 30, int reps = 5) {
  using v16 = float __attribute__((vector_size(64)));
  const int64_t n = bytes / 64;  // vectors
  std::vector<v16> buf(static_cast<size_t>(n));
  for (auto& v : buf) v = v16{} + 1.0f;
  double best = 0.0;
  float sink = 0.0f;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
      v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      int64_t i = begin;
      for (; i + 4 <= end; i += 4) {
        a0 += buf[size_t(i)];
        a1 += buf[size_t(i + 1)];
        a2 += buf[size_t(i + 2)];
        a3 += buf[size_t(i + 3)];
      }
      for (; i < end; ++i) a0 += buf[size_t(i)];
      const v16 a = a0 + a1 + a2 + a3;
      for (int j = 0; j < 16; ++j) total += a[j];
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink += total;
    best = std::max(best, double(bytes) / dt / 1e9);
  }
  if (sink == -1.0f) std::memset(buf.data(), 0, 1);  // keep the sums observable
  return best;
}

}  // namespace shoal::bench
