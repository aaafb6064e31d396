// What linear reaches on this machine once a matrix serves several tokens: a BF16 matrix far
// larger than the caches, streamed from memory and applied to t tokens, with all OpenMP threads.
// At one token this is the weight stream; at several, on a core whose multiply-adds cannot keep
// up with memory, it is the kernel's compute rate. shoal plan takes a CPU matrix's time as the
// longer of streaming its bytes and its multiply-adds at this rate (docs/plan.md).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/system.h"

namespace shoal::kernels {

double measure_linear_gflops(int64_t tokens, int reps) {
  // 16384 x 4096 BF16: 128 MiB, four times the largest L3 we run on; the rate barely depends on
  // the shape (2048 to 7168 columns measured within 10% at 1 to 8 tokens).
  constexpr int64_t kRows = 16384, kCols = 4096;
  if (tokens < 1) return 0;
  std::vector<uint16_t> w(static_cast<size_t>(kRows * kCols));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < kRows * kCols; ++i) w[size_t(i)] = float_to_bf16(float(int64_t(uint64_t(i) * 2654435761u % 2001) - 1000) / 4000.0f);
  std::vector<float> x(static_cast<size_t>(tokens * kCols)), out(static_cast<size_t>(tokens * kRows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int64_t(i * 40503u % 2001) - 1000) / 1000.0f;
  const Matrix m{w.data(), DType::kBF16, kRows, kCols};
  const Context ctx;
  const double flops = 2.0 * double(kRows * kCols) * double(tokens);
  linear(out.data(), x.data(), m, tokens, ctx);  // page in, wake the threads
  // The median call, not the best: the plan predicts what a run sustains, and on a shared machine
  // the best of a few calls is a lucky moment.
  std::vector<double> rates;
  for (int r = 0; r < std::max(1, reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    linear(out.data(), x.data(), m, tokens, ctx);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(flops / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace shoal::kernels
