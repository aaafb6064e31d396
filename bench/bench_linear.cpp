// Decode-shaped matrix-vector products per weight dtype: GB/s of weights streamed, against the
// machine's read bandwidth. Decode is memory-bound when the two are close.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "bench/membw.h"
#include "kernels/kernels.h"

using namespace shoal;

int main(int argc, char** argv) {
  const int64_t rows = 8192, cols = 8192;  // 64 Mi weights: well past the caches at every dtype
  const double bw = bench::read_bandwidth_gbs();
  std::printf("{\"read_bandwidth_gbs\": %.2f}\n", bw);
  std::mt19937 rng(1);
  std::vector<float> x(static_cast<size_t>(cols));
  for (auto& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  std::vector<float> out(static_cast<size_t>(rows));
  std::vector<float> scales(static_cast<size_t>(((rows + 127) / 128) * ((cols + 127) / 128)), 0.01f);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    const int64_t bytes = rows * cols * dtype_bytes(dt);
    std::vector<uint8_t> w(static_cast<size_t>(bytes));
    for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(rng() & 0x77);  // finite in every dtype
    kernels::Matrix m{w.data(), dt, rows, cols, dt == DType::kF8E4M3 ? scales.data() : nullptr};
    kernels::Context ctx;
    kernels::linear(out.data(), x.data(), m, 1, ctx);  // warm up
    const int reps = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) kernels::linear(out.data(), x.data(), m, 1, ctx);
    const double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    const double gbs = double(bytes) / dt_s / 1e9;
    std::printf("{\"dtype\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"ms\": %.3f, \"weights_gbs\": %.2f, "
                "\"fraction_of_read_bandwidth\": %.2f}\n",
                std::string(dtype_name(dt)).c_str(), (long long)rows, (long long)cols, dt_s * 1e3, gbs, gbs / bw);
  }
  return 0;
}
