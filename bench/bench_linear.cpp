// Decode-shaped linear (1 to 4 tokens x an 8192x8192 weight) per dtype: GB/s of weights streamed
// from memory against the machine's read bandwidth, measured before and after the kernels.
//   bench_linear [--tokens 1,4] [--dtypes F32,BF16,F8_E4M3,Q4_K,...] [--numerics fast|exact]
//                [--rows 8192] [--cols 8192] [--pool-mib 2048]
// (threads: OMP_NUM_THREADS; ggml block types take random blocks, fast numerics unless exact).
// --pool-mib: the weights cycle through copies filling this much memory (at least 2 copies);
// under the caches' size (e.g. --rows 512 --cols 2048 --pool-mib 1) the weights stay in cache and
// the figure is the kernel's compute rate, not a fraction of the memory.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bench/args.h"
#include "bench/membw.h"
#include "bench/weights.h"
#include "kernels/kernels.h"
#include "kernels/system.h"

using namespace shoal;

int main(int argc, char** argv) {
  std::string tokens_arg = "1,4", dtypes_arg = "F32,BF16,F16,F8_E4M3";
  bool exact = false;
  int64_t rows = 8192, cols = 8192;  // 64 Mi weights: past the caches at every dtype
  int64_t pool_mib = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokens")) tokens_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--dtypes")) dtypes_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--numerics")) exact = !std::strcmp(argv[i + 1], "exact");
    else if (!std::strcmp(argv[i], "--rows")) rows = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--cols")) cols = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--pool-mib")) pool_mib = std::stoll(argv[i + 1]);
  }
  const bool resident = pool_mib < 2048;
  const kernels::ReadBandwidth before = bench::read_bandwidth();
  std::printf("{\"read_bandwidth_gbs\": %.2f, \"probe_threads\": %d, \"probe_kernel\": \"%s\", \"cpu_variant\": \"%s\", "
              "\"threads\": %d}\n",
              before.gbs, before.threads, before.kernel, kernels::cpu_variant().c_str(), omp_get_max_threads());
  std::vector<std::string> lines;
  double ceiling = before.gbs;
  for (const std::string& name : bench::split_commas(dtypes_arg)) {
    std::optional<DType> dt;
    for (const auto& info : kDTypes)
      if (info.name == name) dt = info.dtype;
    if (!dt) return std::fprintf(stderr, "bench_linear: unknown dtype %s\n", name.c_str()), 2;
    const bench::BenchWeights proto = bench::make_weights(*dt, rows, cols, 1);
    const int64_t bytes = int64_t(proto.bytes.size());
    // Weights cycle through 2 GiB by default: more than any L3, so every call streams from memory.
    const int64_t count = std::max<int64_t>(2, (pool_mib << 20) / bytes);
    std::vector<std::vector<uint8_t>> ws(static_cast<size_t>(count), proto.bytes);
    auto matrix = [&](int64_t k) {
      kernels::Matrix m{ws[static_cast<size_t>(k % count)].data(), *dt, rows, cols,
                        *dt == DType::kF8E4M3 ? proto.scales.data() : nullptr};
      m.numerics = exact ? kernels::Numerics::kExact : kernels::Numerics::kFast;  // ggml block types only
      return m;
    };
    kernels::Context ctx;
    for (const std::string& tk : bench::split_commas(tokens_arg)) {
      const int64_t n = std::stoll(tk);
      std::vector<float> x(static_cast<size_t>(n * cols)), out(static_cast<size_t>(n * rows));
      for (size_t i = 0; i < x.size(); ++i) x[i] = float((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
      for (int64_t k = 0; k < count; ++k) kernels::linear(out.data(), x.data(), matrix(k), n, ctx);  // warm up
      std::vector<double> times;
      for (int rep = 0; rep < 3; ++rep) {
        const int64_t reps = std::max<int64_t>(2 * count, (int64_t(1) << 30) / bytes);  // 1 GiB at least
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t k = 0; k < reps; ++k) kernels::linear(out.data(), x.data(), matrix(k), n, ctx);
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(reps));
      }
      std::sort(times.begin(), times.end());
      const double s = times[1];  // median of 3
      const double gbs = double(bytes) / s / 1e9;
      char line[512];
      std::snprintf(line, sizeof line,
                    "{\"dtype\": \"%s\", \"tokens\": %lld, \"rows\": %lld, \"cols\": %lld, \"ms\": %.3f, "
                    "\"weights_gbs\": %.2f, \"pool_mib\": %lld, \"read_bandwidth_gbs\": %%.2f, \"fraction_of_read_bandwidth\": %%.2f}",
                    name.c_str(), (long long)n, (long long)rows, (long long)cols, s * 1e3, gbs, (long long)pool_mib);
      lines.push_back(line);
      std::printf("%s\n", std::string(line).substr(0, std::string(line).find(", \"read_bandwidth_gbs\"")).append("}").c_str());
      std::fflush(stdout);
      (void)ceiling;
    }
  }
  const kernels::ReadBandwidth after = bench::read_bandwidth();
  const double bw = std::max(before.gbs, after.gbs);
  std::printf("{\"read_bandwidth_gbs_after\": %.2f, \"read_bandwidth_gbs\": %.2f}\n", after.gbs, bw);
  for (const std::string& l : lines) {
    const double gbs = std::stod(l.substr(l.find("\"weights_gbs\": ") + 15));
    std::printf(l.c_str(), bw, gbs / bw);
    std::printf("\n");
    if (!resident) bench::warn_if_over_ceiling(gbs / bw, "a kernel's weight stream");
  }
  return 0;
}
