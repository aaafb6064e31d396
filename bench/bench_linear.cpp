// Decode-shaped matrix-vector products per weight dtype: GB/s of weights streamed from memory,
// against the machine's read bandwidth. Decode is memory-bound when the two are close.
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
  // Weights cycle through 2 GiB per dtype: more than this machine's caches (L3 can be
  // hundreds of MiB on server parts), so every call streams from memory as decode does.
  const int64_t footprint = int64_t(2) << 30;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    const int64_t bytes = rows * cols * dtype_bytes(dt);
    const int64_t count = footprint / bytes;
    std::vector<std::vector<uint8_t>> ws(static_cast<size_t>(count), std::vector<uint8_t>(static_cast<size_t>(bytes)));
    for (auto& w : ws)
      for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(rng() & 0x77);  // finite in every dtype
    kernels::Context ctx;
    auto matrix = [&](int64_t k) {
      return kernels::Matrix{ws[static_cast<size_t>(k % count)].data(), dt, rows, cols,
                             dt == DType::kF8E4M3 ? scales.data() : nullptr};
    };
    for (int64_t k = 0; k < count; ++k) kernels::linear(out.data(), x.data(), matrix(k), 1, ctx);  // warm up
    const int64_t reps = 3 * count;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t k = 0; k < reps; ++k) kernels::linear(out.data(), x.data(), matrix(k), 1, ctx);
    const double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(reps);
    const double gbs = double(bytes) / dt_s / 1e9;
    std::printf("{\"dtype\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"ms\": %.3f, \"weights_gbs\": %.2f, "
                "\"fraction_of_read_bandwidth\": %.2f}\n",
                std::string(dtype_name(dt)).c_str(), (long long)rows, (long long)cols, dt_s * 1e3, gbs, gbs / bw);
  }
  return 0;
}
