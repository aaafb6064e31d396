// CUDA linear at decode sizes against the GPU's memory bandwidth (issue 15): for each dtype and
// token count, the weights' bytes streamed per second over copies of the matrix that together
// exceed the L2 cache (so every call reads from device memory), beside the device-to-device copy
// bandwidth measured in the same run (bytes read and written per second: the ceiling). One JSON
// line per case:
//   build/bench_cuda_linear [--rows R] [--cols C] [--tokens 1,2,4,8] [--dtypes BF16,FP8,F16,F32]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/cuda.h"
#include "kernels/kernels.h"

using namespace shoal;

namespace {

void ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "bench_cuda_linear: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string w; std::getline(in, w, ',');) out.push_back(w);
  return out;
}

// Best of 5 timed rounds of `iters` calls of f, in seconds per call.
template <class F>
double time_per_call(F f, int iters) {
  cudaEvent_t a, b;
  ok(cudaEventCreate(&a), "event");
  ok(cudaEventCreate(&b), "event");
  for (int i = 0; i < iters; ++i) f(i);  // warm
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    ok(cudaEventRecord(a), "record");
    for (int i = 0; i < iters; ++i) f(i);
    ok(cudaEventRecord(b), "record");
    ok(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ok(cudaEventElapsedTime(&ms, a, b), "elapsed");
    best = std::min(best, double(ms) / 1e3 / iters);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t R = 8192, C = 8192;
  std::string tokens = "1,2,4,8", dtypes = "BF16,F8_E4M3,F16,F32";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--rows") R = std::atoll(v.c_str());
    else if (k == "--cols") C = std::atoll(v.c_str());
    else if (k == "--tokens") tokens = v;
    else if (k == "--dtypes") dtypes = v;
    else { std::fprintf(stderr, "bench_cuda_linear: unknown flag %s\n", k.c_str()); return 2; }
  }
  if (kernels::cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_cuda_linear: no CUDA device\n");
    return 3;
  }
  cudaDeviceProp prop{};
  ok(cudaGetDeviceProperties(&prop, 0), "properties");
  // The ceiling: a device-to-device copy of 1 GiB, bytes read plus written per second.
  const size_t copy_bytes = size_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  ok(cudaMalloc(&src, copy_bytes), "malloc");
  ok(cudaMalloc(&dst, copy_bytes), "malloc");
  ok(cudaMemset(src, 1, copy_bytes), "memset");
  const double copy_s = time_per_call([&](int) { ok(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice), "copy"); }, 5);
  const double copy_gbs = 2.0 * double(copy_bytes) / copy_s / 1e9;
  cudaFree(src);
  cudaFree(dst);

  std::mt19937 rng(1);
  for (const std::string& dname : split(dtypes)) {
    auto dt = dtype_from_name(dname == "FP8" ? "F8_E4M3" : dname);
    if (!dt) { std::fprintf(stderr, "bench_cuda_linear: unknown dtype %s\n", dname.c_str()); return 2; }
    const int64_t bytes = dtype_row_bytes(*dt, C) * R;
    const int64_t scale_cols = (C + 127) / 128, scale_n = ((R + 127) / 128) * scale_cols;
    // Enough copies to exceed the L2 several times over (at least 512 MiB in all).
    const int copies = int(std::max<int64_t>(2, ((int64_t(512) << 20) + bytes - 1) / bytes));
    std::vector<uint8_t> host(static_cast<size_t>(bytes));
    for (size_t i = 0; i < host.size(); i += 2) {  // finite, moderate values in every dtype
      host[i] = uint8_t(rng() & 0x3F);
      if (i + 1 < host.size()) host[i + 1] = uint8_t(0x3C);
    }
    std::vector<float> scales(size_t(scale_n), 0.01f);
    std::vector<void*> w(static_cast<size_t>(copies));
    float* sc = nullptr;
    ok(cudaMalloc(&sc, size_t(scale_n) * sizeof(float)), "malloc");
    ok(cudaMemcpy(sc, scales.data(), size_t(scale_n) * sizeof(float), cudaMemcpyHostToDevice), "upload");
    for (void*& p : w) {
      ok(cudaMalloc(&p, size_t(bytes)), "malloc");
      ok(cudaMemcpy(p, host.data(), size_t(bytes), cudaMemcpyHostToDevice), "upload");
    }
    for (const std::string& ts : split(tokens)) {
      const int64_t n = std::atoll(ts.c_str());
      float *x = nullptr, *out = nullptr;
      ok(cudaMalloc(&x, size_t(n * C) * sizeof(float)), "malloc");
      ok(cudaMalloc(&out, size_t(n * R) * sizeof(float)), "malloc");
      ok(cudaMemset(x, 0, size_t(n * C) * sizeof(float)), "memset");
      const double s = time_per_call(
          [&](int i) {
            kernels::Matrix m;
            m.data = w[size_t(i % copies)];
            m.dtype = *dt;
            m.rows = R;
            m.cols = C;
            m.scale_inv = *dt == DType::kF8E4M3 ? sc : nullptr;
            kernels::linear(out, x, m, n, kernels::Context{kernels::Device::kCuda, nullptr});
          },
          copies * 4);
      const double gbs = double(bytes) / s / 1e9;
      std::printf("{\"bench\": \"cuda_linear\", \"device\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, \"cols\": %lld, "
                  "\"tokens\": %lld, \"us_per_call\": %.2f, \"weight_gbs\": %.1f, \"copy_gbs\": %.1f, "
                  "\"fraction_of_copy\": %.3f}\n",
                  prop.name, std::string(dtype_name(*dt)).c_str(), (long long)R, (long long)C, (long long)n, s * 1e6, gbs,
                  copy_gbs, gbs / copy_gbs);
      std::fflush(stdout);
      cudaFree(x);
      cudaFree(out);
    }
    for (void* p : w) cudaFree(p);
    cudaFree(sc);
  }
  return 0;
}
