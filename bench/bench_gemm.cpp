// Prefill-shaped linear (512 tokens x an 8192x8192 weight by default) per dtype: GFLOP/s against
// the machine's float32 FMA peak (measured beside it with the kernels' own registers).
//   bench_gemm [--tokens 512] [--dtypes BF16,F8_E4M3] [--rows 8192 --cols 8192]   (threads: OMP_NUM_THREADS)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/args.h"
#include "bench/weights.h"
#include "kernels/kernels.h"
#include "kernels/system.h"

using namespace shoal;

int main(int argc, char** argv) {
  std::string dtypes_arg = "F32,BF16,F8_E4M3";
  int64_t n = 512, rows = 8192, cols = 8192;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokens")) n = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dtypes")) dtypes_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--rows")) rows = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--cols")) cols = std::stoll(argv[i + 1]);
  }
  const double peak_before = kernels::measure_fma_peak_gflops();
  std::printf("{\"fma_peak_gflops\": %.1f, \"cpu_variant\": \"%s\", \"threads\": %d}\n", peak_before,
              kernels::cpu_variant().c_str(), omp_get_max_threads());
  std::vector<float> x(static_cast<size_t>(n * cols)), out(static_cast<size_t>(n * rows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
  struct Result { std::string dtype; double s; };
  std::vector<Result> results;
  for (const std::string& name : bench::split_commas(dtypes_arg)) {
    const auto dt = dtype_from_name(name);
    if (!dt) return std::fprintf(stderr, "bench_gemm: unknown dtype %s\n", name.c_str()), 2;
    const bench::BenchWeights w = bench::make_weights(*dt, rows, cols, 1);
    const kernels::Matrix m{w.bytes.data(), *dt, rows, cols, *dt == DType::kF8E4M3 ? w.scales.data() : nullptr};
    kernels::Context ctx;
    kernels::linear(out.data(), x.data(), m, n, ctx);  // warm up
    std::vector<double> times;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      kernels::linear(out.data(), x.data(), m, n, ctx);
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    results.push_back({name, times[1]});
  }
  const double peak = std::max(peak_before, kernels::measure_fma_peak_gflops());
  for (const Result& r : results) {
    const double gflops = 2.0 * double(n) * double(rows) * double(cols) / r.s / 1e9;
    std::printf("{\"dtype\": \"%s\", \"tokens\": %lld, \"rows\": %lld, \"cols\": %lld, \"ms\": %.1f, \"gflops\": %.1f, "
                "\"fma_peak_gflops\": %.1f, \"fraction_of_fma_peak\": %.2f}\n",
                r.dtype.c_str(), (long long)n, (long long)rows, (long long)cols, r.s * 1e3, gflops, peak, gflops / peak);
  }
  return 0;
}
