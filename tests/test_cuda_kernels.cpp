// The CUDA kernels (kernels/cuda, issue 15) against the double-precision references of
// tests/support/test_weights.h, the same the CPU kernels are held to, and batch invariance on the
// device: a token's outputs bitwise the same alone, in a batch of 32 and at any place in it.
// Without a GPU each case says "skipped: no CUDA device" and ctest reports it as skipped
// (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt), never as passed.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "kernels/cuda/cuda.h"
#include "kernels/kernels.h"
#include "tests/support/test_weights.h"

using namespace shoal;
using namespace shoal::test;
using kernels::Context;
using kernels::Matrix;

namespace {

bool no_gpu() {
  if (kernels::cuda_device_count() > 0) return false;
  WARN("skipped: no CUDA device");
  return true;
}

// A device copy of a host array, freed with it.
template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { REQUIRE(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess); }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size()) {
    REQUIRE(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceArray() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
};

// A weight's bytes and scales on the device, as a Matrix of the whole tensor.
struct DeviceWeight {
  DeviceArray<uint8_t> bytes;
  DeviceArray<float> scale;
  Matrix m;
  explicit DeviceWeight(const TestWeight& w) : bytes(w.bytes), scale(w.scale.empty() ? std::vector<float>{0} : w.scale) {
    m = w.matrix();
    m.data = bytes.p;
    m.scale_inv = w.dtype == DType::kF8E4M3 ? scale.p : nullptr;
  }
};

const Context kGpu{kernels::Device::kCuda, nullptr};

std::vector<float> gpu_linear(const DeviceWeight& w, const Matrix& view, const std::vector<float>& x, int64_t n) {
  DeviceArray<float> xd(x), out(size_t(n * view.rows));
  kernels::linear(out.p, xd.p, view, n, kGpu);
  return out.get();
}

}  // namespace

TEST_CASE("CUDA linear: F32, F16, BF16 and FP8 within float rounding of the exact sums, views and odd widths",
          "[cuda]") {
  if (no_gpu()) return;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    // Widths: one chunk, a partial last chunk, rows whose starts are not 16-byte aligned (100
    // BF16 values: 200 bytes), FP8 with a partial column block; rows across FP8 row blocks.
    for (auto [R, C] : std::vector<std::pair<int64_t, int64_t>>{{9, 16}, {37, 100}, {300, 300}, {130, 1024}}) {
      const TestWeight w = make_weight(dt, R, C, uint32_t(R * 31 + C));
      const DeviceWeight dw(w);
      for (int64_t n : {1, 2, 3, 5, 8, 13, 32}) {
        for (auto [row0, rows] : std::vector<std::pair<int64_t, int64_t>>{{0, R}, {R / 3, R - R / 3 - 1}}) {
          INFO(dtype_name(dt) << " " << R << "x" << C << ", rows " << row0 << ".." << row0 + rows << ", n " << n);
          const std::vector<float> x = random_vec(size_t(n * C), uint32_t(n + 7 * C));
          std::vector<double> want, mag;
          ref_linear(want, mag, x, w, row0, rows, n);
          const std::vector<float> got = gpu_linear(dw, dw.m.slice_rows(row0, rows), x, n);
          // One rounding per product and per sum: within C ulps of the sum of magnitudes.
          CHECK(worst_ratio(got, want, mag, double(C + 32) * 0x1p-24) <= 1.0);
        }
      }
    }
  }
}

TEST_CASE("CUDA linear: a token's outputs are bitwise the same alone, in a batch of 32 and anywhere in it", "[cuda]") {
  if (no_gpu()) return;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    INFO(dtype_name(dt));
    const int64_t R = 257, C = 1000, n = 32;
    const TestWeight w = make_weight(dt, R, C, 5);
    const DeviceWeight dw(w);
    const std::vector<float> x = random_vec(size_t(n * C), 9);
    const std::vector<float> all = gpu_linear(dw, dw.m, x, n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<float> one(x.begin() + t * C, x.begin() + (t + 1) * C);
      const std::vector<float> alone = gpu_linear(dw, dw.m, one, 1);
      CHECK(std::memcmp(alone.data(), all.data() + t * R, size_t(R) * sizeof(float)) == 0);
    }
    // Tokens 3..15 as a batch of 13 (passes of 8, 4 and 1): each lands on other lanes of a pass.
    const std::vector<float> mid(x.begin() + 3 * C, x.begin() + 16 * C);
    const std::vector<float> part = gpu_linear(dw, dw.m, mid, 13);
    CHECK(std::memcmp(part.data(), all.data() + 3 * R, size_t(13 * R) * sizeof(float)) == 0);
  }
}
