#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/variant.h"
#include "kernels/system.h"

namespace shoal::kernels {

ReadBandwidth measure_read_bandwidth(int64_t bytes, int reps) {
  const int64_t n = bytes / 4 / 512 * 512;
  float* buf = static_cast<float*>(std::aligned_alloc(64, size_t(n) * 4));
  if (buf == nullptr) return {};
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;  // every page touched by the threads that read it
  ReadBandwidth best;
  best.bytes = n * 4;
  volatile float sink = 0;
  const int max_threads = omp_get_max_threads();
  for (int threads = 1; threads <= max_threads; ++threads)
    for (int kernel = 0; kernel < 3; ++kernel)
      for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
          const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
          const int64_t begin = n / 512 * t / nt * 512, end = n / 512 * (t + 1) / nt * 512;
          total += cpu::read_pass(buf + begin, end - begin, kernel);
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        sink = sink + total;
        const double gbs = double(n) * 4 / s / 1e9;
        if (gbs > best.gbs)
          best = {gbs, threads, kernel == 0 ? "one stream" : kernel == 1 ? "four streams" : "eight streams, prefetch", n * 4};
      }
  std::free(buf);
  return best;
}

namespace {

// Best rate over `reps` runs of a compute loop on all OpenMP threads, in G operations per second:
// pass(iters) does ops_per_iter operations per iteration on each thread.
double peak_rate(float (*pass)(int64_t), double ops_per_iter, int reps) {
  const int64_t iters = int64_t(1) << 22;
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
    int threads = 1;
#pragma omp parallel reduction(+ : total)
    {
#pragma omp single
      threads = omp_get_num_threads();
      total += pass(iters);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + total;
    best = std::max(best, double(iters) * ops_per_iter * threads / s / 1e9);
  }
  return best;
}

}  // namespace

double measure_fma_peak_gflops(int reps) { return peak_rate(cpu::fma_pass, 12 * 16 * 2, reps); }

double measure_int8_peak_gops(int reps) {
  return peak_rate(cpu::int8_pass, 12 * double(cpu::int8_pass_macs()) * 2, reps);
}

std::string cpu_variant() { return std::string(cpu::variant_name(cpu::active_variant())); }

std::string cpu_variants_supported() {
  std::string out;
  for (cpu::Variant v : cpu::supported_variants()) out += (out.empty() ? "" : " ") + std::string(cpu::variant_name(v));
  return out;
}

}  // namespace shoal::kernels
