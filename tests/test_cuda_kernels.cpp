// The CUDA kernels (kernels/cuda, issue 15) against the double-precision references of
// tests/support/test_weights.h, the same the CPU kernels are held to, and batch invariance on the
// device: a token's outputs bitwise the same alone, in a batch of 32 and at any place in it.
// Without a GPU each case says "skipped: no CUDA device" and ctest reports it as skipped
// (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt), never as passed.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstring>
#include <algorithm>
#include <cmath>
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

TEST_CASE("CUDA linear_t: the CPU's bits for every dtype, view and token count", "[cuda]") {
  if (no_gpu()) return;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    const int64_t R = 300, C = 200;
    const TestWeight w = make_weight(dt, R, C, 17);
    const DeviceWeight dw(w);
    for (int64_t n : {1, 3, 8, 21}) {
      for (auto [row0, rows] : std::vector<std::pair<int64_t, int64_t>>{{0, R}, {130, 128}}) {
        INFO(dtype_name(dt) << ", rows " << row0 << ".." << row0 + rows << ", n " << n);
        const std::vector<float> x = random_vec(size_t(n * rows), uint32_t(n + rows));
        std::vector<float> want(size_t(n * C));
        kernels::linear_t(want.data(), x.data(), w.matrix().slice_rows(row0, rows), n, Context{});
        DeviceArray<float> xd(x), out(size_t(n * C));
        kernels::linear_t(out.p, xd.p, dw.m.slice_rows(row0, rows), n, kGpu);
        const std::vector<float> got = out.get();
        CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("CUDA rms_norm, silu_mul and rope against the CPU's", "[cuda]") {
  if (no_gpu()) return;
  auto ulps = [](float a, float b) {
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::abs(int64_t(ia) - int64_t(ib));
  };
  auto worst_ulps = [&](const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    int64_t worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, ulps(a[i], b[i]));
    return worst;
  };
  const int64_t n = 13, d = 7168;  // DeepSeek-V3's width: 28 elements per thread
  const std::vector<float> x = random_vec(size_t(n * d), 3, -4.0f, 4.0f);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    INFO("rms_norm, weight " << dtype_name(dt));
    const TestWeight w = make_weight(dt, 1, d, 4);
    const DeviceWeight dw(w);
    std::vector<float> want(size_t(n * d));
    kernels::rms_norm(want.data(), x.data(), w.matrix(), n, 1e-6f, Context{});
    DeviceArray<float> xd(x), out(size_t(n * d));
    kernels::rms_norm(out.p, xd.p, dw.m, n, 1e-6f, kGpu);
    CHECK(worst_ulps(out.get(), want) <= 1);  // the double sums round alike but for a last bit
  }
  {
    INFO("silu_mul");
    const std::vector<float> up = random_vec(size_t(n * d), 5, -2.0f, 2.0f);
    std::vector<float> want(size_t(n * d));
    kernels::silu_mul(want.data(), x.data(), up.data(), n, d, Context{});
    DeviceArray<float> gd(x), ud(up), out(size_t(n * d));
    kernels::silu_mul(out.p, gd.p, ud.p, n, d, kGpu);
    CHECK(worst_ulps(out.get(), want) <= 4);  // CUDA's expf is within 2 ulp, glibc's within 1
  }
  for (auto layout : {kernels::RopeLayout::kInterleaved, kernels::RopeLayout::kHalves}) {
    INFO("rope, layout " << int(layout));
    const int64_t heads = 5, head_dim = 192, rope_dim = 64;  // the rope part after 128 others, as MLA's q
    std::vector<float> q = random_vec(size_t(n * heads * head_dim), 6);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(t * 977 % 40000);
    std::vector<float> inv(size_t(rope_dim / 2));
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.0f, -2.0f * float(i) / float(rope_dim));
    kernels::RopeParams p{q.data() + 128, pos.data(), inv.data(), n, heads, rope_dim, heads * head_dim, head_dim};
    p.attn_factor = 1.25f;
    p.layout = layout;
    DeviceArray<float> qd(q);
    DeviceArray<int32_t> pd(pos);
    DeviceArray<float> id(inv);
    kernels::rope(p, Context{});
    kernels::RopeParams g = p;
    g.x = qd.p + 128;
    g.positions = pd.p;
    g.inv_freq = id.p;
    kernels::rope(g, kGpu);
    CHECK(worst_ulps(qd.get(), q) <= 1);  // the same operations; cos and sin in double may differ in a last bit
  }
}

TEST_CASE("CUDA embedding: the CPU's rows, every dtype, a view of the table", "[cuda]") {
  if (no_gpu()) return;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    INFO(dtype_name(dt));
    const int64_t R = 300, C = 272;
    const TestWeight w = make_weight(dt, R, C, 23);
    const DeviceWeight dw(w);
    const std::vector<int32_t> ids = {0, 299 - 7, 5, 5, 128, 200, 1};  // repeats, across FP8 row blocks
    const Matrix view = w.matrix().slice_rows(7, R - 7);
    std::vector<float> want(ids.size() * size_t(C));
    kernels::embedding(want.data(), ids.data(), view, int64_t(ids.size()), Context{});
    DeviceArray<float> out(want.size());
    kernels::embedding(out.p, ids.data(), dw.m.slice_rows(7, R - 7), int64_t(ids.size()), kGpu);  // ids on the host
    const std::vector<float> got = out.get();
    CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
  }
}
