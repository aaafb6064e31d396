// Read bandwidth of this machine: a parallel sum over a buffer larger than the caches, the
// ceiling for any decode step that streams weights.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace shoal::bench {

inline double read_bandwidth_gbs(int64_t bytes = int64_t(1) << 30, int reps = 5) {
  std::vector<float> buf(static_cast<size_t>(bytes / 4), 1.0f);
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    float s = 0.0f;
    const int64_t n = int64_t(buf.size());
#pragma omp parallel for simd reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += buf[static_cast<size_t>(i)];
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + s;
    best = std::max(best, double(bytes) / dt / 1e9);
  }
  return best;
}

}  // namespace shoal::bench
