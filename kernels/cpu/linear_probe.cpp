// What linear reaches on this machine once a matrix serves several tokens: a BF16 matrix far
// larger than the caches, streamed from memory and applied to t tokens, with all OpenMP threads.
// At one token this is the weight stream; at several, on a core whose multiply-adds cannot keep
// up with memory, it is the kernel's compute rate. shoal plan takes a CPU matrix's time as the
// longer of streaming its bytes and its multiply-adds at this rate (docs/plan.md).
#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/system.h"

namespace shoal::kernels {

double measure_linear_gflops(int64_t tokens, int reps) {
  // 16384 x 4096 BF16: 128 MiB, four times the L3 of the machines we measured on; the rate barely
  // depends on the shape (2048 to 7168 columns measured within 10% at 1 to 8 tokens).
  constexpr int64_t kRows = 16384, kCols = 4096;
  if (tokens < 1) return 0;
  std::vector<uint16_t> w(static_cast<size_t>(kRows * kCols));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < kRows * kCols; ++i) w[size_t(i)] = float_to_bf16(float(int64_t(uint64_t(i) * 2654435761u % 2001) - 1000) / 4000.0f);
  std::vector<float> x(static_cast<size_t>(tokens * kCols)), out(static_cast<size_t>(tokens * kRows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int64_t(i * 40503u % 2001) - 1000) / 1000.0f;
  const Matrix m{w.data(), DType::kBF16, kRows, kCols};
  // At many tokens a call applies a view of at least 32 MiB, the next call the next view, so that
  // a call stays short on a slow core while its weights still come from memory.
  const int64_t view_rows = tokens <= 4 ? kRows : std::max<int64_t>(kRows / 4, kRows * 4 / tokens);
  const Context ctx;
  const double flops = 2.0 * double(view_rows * kCols) * double(tokens);
  linear(out.data(), x.data(), m.slice_rows(kRows - view_rows, view_rows), tokens, ctx);  // wake the threads
  // The median call, not the best: the plan predicts what a run sustains, and on a shared machine
  // the best of a few calls is a lucky moment. At least 3 calls; no more once a second has passed.
  std::vector<double> rates;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < std::max(1, reps); ++r) {
    const Matrix view = m.slice_rows((int64_t(r) * view_rows) % kRows, view_rows);
    const auto t0 = std::chrono::steady_clock::now();
    linear(out.data(), x.data(), view, tokens, ctx);
    const auto t1 = std::chrono::steady_clock::now();
    rates.push_back(flops / std::chrono::duration<double>(t1 - t0).count() / 1e9);
    if (rates.size() >= 3 && std::chrono::duration<double>(t1 - start).count() > 1.0) break;
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace shoal::kernels
