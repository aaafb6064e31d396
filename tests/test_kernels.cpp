// Every kernel of kernels/kernels.h against a plain reference written here (double-precision
// loops, explicit formulas, decoders written from the format definitions), with edge cases:
// FP8 partial blocks and row views starting mid-block, token tiles, zero rows, future keys that
// must stay invisible, routing cases built so that a wrong rule picks other experts.
// Each test body runs once per backend in backends().
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <omp.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "common/dtype.h"
#include "kernels/cpu/variant.h"
#include "kernels/kernels.h"
#include "kernels/system.h"
#include "tests/support/process.h"
#include "tests/support/test_weights.h"

using namespace shoal;
using kernels::Context;
using kernels::Matrix;
using namespace shoal::test;

namespace {

// The backends every kernel test here runs on: the CPU's variants. The CUDA kernels have their
// own tests (tests/test_cuda_kernels.cpp: device copies of the buffers, the same references).
std::vector<Context> backends() { return {Context{kernels::Device::kCpu, nullptr}}; }
const char* backend_name(const Context& c) { return c.device == kernels::Device::kCpu ? "cpu" : "cuda"; }

const char* dtype_label(DType d) { return dtype_name(d).data(); }

}  // namespace

// ============================================================================================
// Scalar conversions
// ============================================================================================

TEST_CASE("fp8 e4m3 decode matches the format for all 256 codes", "[dtype]") {
  for (int code = 0; code < 256; ++code) {
    if (e4m3_is_nan(uint8_t(code))) continue;  // NaN in e4m3fn, never stored
    INFO("code " << code);
    const float got = fp8_e4m3_to_float(uint8_t(code));
    CHECK(double(got) == ref_e4m3(uint8_t(code)));
    CHECK(std::signbit(got) == bool(code & 0x80));  // 0x80 is -0
  }
  CHECK(fp8_e4m3_to_float(0x7E) == 448.0f);
  CHECK(fp8_e4m3_to_float(0xFE) == -448.0f);
  CHECK(fp8_e4m3_to_float(0x01) == std::ldexp(1.0f, -9));   // smallest subnormal
  CHECK(fp8_e4m3_to_float(0x07) == 7 * std::ldexp(1.0f, -9));
  CHECK(fp8_e4m3_to_float(0x08) == std::ldexp(1.0f, -6));   // smallest normal
  CHECK(fp8_e4m3_to_float(0x38) == 1.0f);
}

TEST_CASE("float_to_fp8_e4m3: round trip, ties to even, saturation", "[dtype]") {
  SECTION("every finite code round-trips") {
    for (int code = 0; code < 256; ++code) {
      if (e4m3_is_nan(uint8_t(code))) continue;
      INFO("code " << code);
      CHECK(int(float_to_fp8_e4m3(float(ref_e4m3(uint8_t(code))))) == code);
    }
  }
  SECTION("midpoints go to the even code, points beside them to the nearer one") {
    for (int sign = 0; sign < 2; ++sign) {
      for (int c = 0; c < 0x7E; ++c) {
        const double lo = ref_e4m3(uint8_t(c)), hi = ref_e4m3(uint8_t(c + 1));
        const float mid = float((lo + hi) / 2);  // exact in float
        REQUIRE(double(mid) == (lo + hi) / 2);
        const float s = sign ? -1.0f : 1.0f;
        const int even = (c % 2 == 0) ? c : c + 1;
        const uint8_t sb = sign ? 0x80 : 0;
        INFO("codes " << c << "," << c + 1 << " sign " << sign);
        CHECK(int(float_to_fp8_e4m3(s * mid)) == (sb | even));
        CHECK(int(float_to_fp8_e4m3(s * std::nextafter(mid, 0.0f))) == (sb | c));
        CHECK(int(float_to_fp8_e4m3(s * std::nextafter(mid, 1e9f))) == (sb | (c + 1)));
      }
    }
  }
  SECTION("saturation at 448 and zero at the bottom") {
    CHECK(float_to_fp8_e4m3(448.0f) == 0x7E);
    CHECK(float_to_fp8_e4m3(449.0f) == 0x7E);
    CHECK(float_to_fp8_e4m3(464.0f) == 0x7E);  // would be the 448/480 midpoint without the clamp
    CHECK(float_to_fp8_e4m3(1e9f) == 0x7E);
    CHECK(float_to_fp8_e4m3(std::numeric_limits<float>::infinity()) == 0x7E);
    CHECK(float_to_fp8_e4m3(-1e9f) == 0xFE);
    CHECK(float_to_fp8_e4m3(-std::numeric_limits<float>::infinity()) == 0xFE);
    CHECK(float_to_fp8_e4m3(0.0f) == 0x00);
    CHECK(float_to_fp8_e4m3(-0.0f) == 0x80);
    CHECK(float_to_fp8_e4m3(std::ldexp(1.0f, -10)) == 0x00);  // half the smallest subnormal: tie to 0
    CHECK(float_to_fp8_e4m3(std::ldexp(1.1f, -10)) == 0x01);
    CHECK(float_to_fp8_e4m3(std::ldexp(1.0f, -12)) == 0x00);
    CHECK(e4m3_is_nan(float_to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN())));
  }
  SECTION("random floats go to the nearest code (brute force over all codes)") {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> expo(-12.0f, 9.5f);
    for (int i = 0; i < 20000; ++i) {
      const float f = std::exp2(expo(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
      const uint8_t got = float_to_fp8_e4m3(f);
      const double err = std::fabs(ref_e4m3(got) - double(f));
      double best = 1e300;
      for (int c = 0; c < 256; ++c)
        if (!e4m3_is_nan(uint8_t(c)) && bool(c & 0x80) == std::signbit(f))
          best = std::min(best, std::fabs(ref_e4m3(uint8_t(c)) - double(f)));
      INFO("f = " << f);
      if (std::fabs(f) < 448.0f) CHECK(err == best);
      else CHECK(int(got & 0x7F) == 0x7E);
    }
  }
}

TEST_CASE("bf16 and f16 decode every code per the format", "[dtype]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want_bf = ref_bf16(uint16_t(h)), want_h = ref_f16(uint16_t(h));
    const float bf = bf16_to_float(uint16_t(h)), hf = f16_to_float(uint16_t(h));
    if (std::isnan(want_bf)) {
      CHECK(std::isnan(bf));
    } else if (double(bf) != want_bf || std::signbit(bf) != bool(h & 0x8000)) {
      FAIL_CHECK("bf16 code " << h << ": got " << bf << " want " << want_bf);
    }
    if (std::isnan(want_h)) {
      CHECK(std::isnan(hf));
    } else if (double(hf) != want_h || std::signbit(hf) != bool(h & 0x8000)) {
      FAIL_CHECK("f16 code " << h << ": got " << hf << " want " << want_h);
    }
  }
  // Spot values: subnormals, negative zero, extremes.
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_float(0x03FF) == 1023 * std::ldexp(1.0f, -24));
  CHECK(f16_to_float(0x7BFF) == 65504.0f);
  CHECK(f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::signbit(f16_to_float(0x8000)));
  CHECK(f16_to_float(0x8000) == 0.0f);
  CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(std::signbit(bf16_to_float(0x8000)));
}

TEST_CASE("float_to_bf16 rounds to nearest even", "[dtype]") {
  SECTION("every non-NaN bf16 value round-trips, -0 included") {
    for (uint32_t h = 0; h < 65536; ++h) {
      if (std::isnan(ref_bf16(uint16_t(h)))) continue;
      if (float_to_bf16(bf16_to_float(uint16_t(h))) != h) FAIL_CHECK("bf16 code " << h << " does not round-trip");
    }
  }
  SECTION("exact midpoints go to the even neighbour") {
    for (uint32_t h : {0x3F80u, 0x3F81u, 0x0001u, 0x0002u, 0x7F7Eu, 0xBF80u, 0xBF81u, 0x4049u, 0x404Au}) {
      const float mid = std::bit_cast<float>((h << 16) | 0x8000u);
      const uint32_t even = (h & 1) ? h + 1 : h;
      INFO("between " << h << " and " << h + 1);
      CHECK(uint32_t(float_to_bf16(mid)) == even);
      CHECK(uint32_t(float_to_bf16(std::bit_cast<float>((h << 16) | 0x7FFFu))) == h);
      CHECK(uint32_t(float_to_bf16(std::bit_cast<float>((h << 16) | 0x8001u))) == h + 1);
    }
  }
  SECTION("random floats go to the nearer of the two neighbours") {
    std::mt19937 rng(11);
    for (int i = 0; i < 100000; ++i) {
      const uint32_t u = rng();
      const float f = std::bit_cast<float>(u);
      if (std::isnan(f) || std::isinf(f)) continue;
      const uint16_t got = float_to_bf16(f);
      const uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);  // same sign, |lo| <= |f| < |hi|
      // Past the largest finite value the upper neighbour is infinity, at 2^128 for rounding.
      const double hv = (hi & 0x7FFF) == 0x7F80 ? std::copysign(std::ldexp(1.0, 128), double(f)) : ref_bf16(hi);
      const double dl = std::fabs(double(f) - ref_bf16(lo)), dh = std::fabs(hv - double(f));
      const uint16_t want = (dl < dh || (dl == dh && (lo & 1) == 0)) ? lo : hi;
      if (got != want) FAIL_CHECK("f bits " << u << ": got " << got << " want " << want);
    }
  }
  SECTION("specials") {
    CHECK(float_to_bf16(-0.0f) == 0x8000);
    CHECK(float_to_bf16(std::numeric_limits<float>::infinity()) == 0x7F80);
    CHECK(float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xFF80);
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // rounds up to inf, as torch
    CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    CHECK(float_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  }
}

// ============================================================================================
// dequantize_row, linear, linear_t
// ============================================================================================

TEST_CASE("dequantize_row reproduces every stored value, FP8 block scales included", "[kernels][linear]") {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    const TestWeight w = make_weight(dt, 300, 260, 101);
    const Matrix m = w.matrix();
    std::vector<float> row(static_cast<size_t>(w.C));
    for (int64_t first : {int64_t(0), int64_t(100), int64_t(127), int64_t(129)}) {
      const Matrix v = m.slice_rows(first, 300 - first - 20);
      for (int64_t r = 0; r < v.rows; ++r) {
        kernels::dequantize_row(row.data(), v, r);
        for (int64_t c = 0; c < w.C; ++c)
          if (double(row[size_t(c)]) != w.value[size_t((first + r) * w.C + c)])
            FAIL("dtype " << dtype_label(dt) << " view at " << first << " row " << r << " col " << c << ": got "
                          << row[size_t(c)] << " want " << w.value[size_t((first + r) * w.C + c)]);
      }
    }
  }
}

TEST_CASE("linear matches a double reference for every dtype and token count", "[kernels][linear]") {
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      // 160 x 200 gives a 2 x 2 grid of partial blocks in both directions.
      const TestWeight w = make_weight(dt, 160, 200, 5 + uint32_t(dt));
      for (int64_t n : {1, 3, 32, 33, 70}) {
        INFO(backend_name(ctx) << " dtype " << dtype_label(dt) << " n " << n);
        const auto x = random_vec(size_t(n * w.C), uint32_t(n));
        std::vector<float> out(size_t(n * w.R), NAN);
        kernels::linear(out.data(), x.data(), w.matrix(), n, ctx);
        std::vector<double> want, mag;
        ref_linear(want, mag, x, w, 0, w.R, n);
        CHECK(worst_ratio(out, want, mag, 1e-5) <= 1.0);
      }
    }
  }
}

TEST_CASE("linear reads each FP8 block with its own scale", "[kernels][linear]") {
  // Activations live in one column block at a time, so every output depends on exactly one
  // scale: a transposed, shifted or row-view-confused scale index changes it by 8x or more.
  for (const Context& ctx : backends()) {
    const TestWeight w = make_weight(DType::kF8E4M3, 300, 290, 77);  // grid 3 x 3, last blocks partial
    const Matrix m = w.matrix();
    for (auto [first, rows] : {std::pair<int64_t, int64_t>{0, 300}, {100, 90}, {130, 170}, {257, 43}}) {
      const Matrix v = m.slice_rows(first, rows);
      for (int64_t bc = 0; bc < w.scale_cols(); ++bc) {
        INFO(backend_name(ctx) << " view rows [" << first << ", " << first + rows << ") column block " << bc);
        const int64_t n = 5;
        auto x = random_vec(size_t(n * w.C), uint32_t(bc + 1), 0.5f, 1.0f);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t c = 0; c < w.C; ++c)
            if (c / w.block != bc) x[size_t(t * w.C + c)] = 0.0f;
        std::vector<float> out(size_t(n * rows), NAN);
        kernels::linear(out.data(), x.data(), v, n, ctx);
        std::vector<double> want, mag;
        ref_linear(want, mag, x, w, first, rows, n);
        CHECK(worst_ratio(out, want, mag, 1e-5) <= 1.0);
      }
    }
  }
}

TEST_CASE("linear on row views starting mid-block", "[kernels][linear]") {
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
      const TestWeight w = make_weight(dt, 300, 200, 31 + uint32_t(dt));
      // A view of a view: row0 accumulates (100 + 30 = 130, inside the second row block).
      const Matrix outer = w.matrix().slice_rows(100, 150);
      for (auto [first, rows, vw] : {std::tuple<int64_t, int64_t, Matrix>{100, 90, w.matrix().slice_rows(100, 90)},
                                     {130, 64, outer.slice_rows(30, 64)},
                                     {299, 1, w.matrix().slice_rows(299, 1)}}) {
        REQUIRE(vw.row0 == first);
        for (int64_t n : {1, 3, 40}) {
          INFO(backend_name(ctx) << " dtype " << dtype_label(dt) << " view at " << first << " n " << n);
          const auto x = random_vec(size_t(n * w.C), uint32_t(100 + n));
          std::vector<float> out(size_t(n * rows), NAN);
          kernels::linear(out.data(), x.data(), vw, n, ctx);
          std::vector<double> want, mag;
          ref_linear(want, mag, x, w, first, rows, n);
          CHECK(worst_ratio(out, want, mag, 1e-5) <= 1.0);
        }
      }
    }
  }
}

TEST_CASE("linear_t matches a double reference, whole tensors and mid-block views", "[kernels][linear]") {
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      // 300 columns: two column tiles of the CPU kernel and a partial third FP8 column block.
      const TestWeight w = make_weight(dt, 290, 300, 55 + uint32_t(dt));
      for (auto [first, rows] : {std::pair<int64_t, int64_t>{0, 290}, {100, 32}, {120, 100}, {200, 90}}) {
        const Matrix v = w.matrix().slice_rows(first, rows);
        for (int64_t n : {1, 3, 37}) {
          INFO(backend_name(ctx) << " dtype " << dtype_label(dt) << " view [" << first << ", " << first + rows
                                 << ") n " << n);
          const auto x = random_vec(size_t(n * rows), uint32_t(7 * n + first));
          std::vector<float> out(size_t(n * w.C), NAN);
          kernels::linear_t(out.data(), x.data(), v, n, ctx);
          std::vector<double> want, mag;
          ref_linear_t(want, mag, x, w, first, rows, n);
          CHECK(worst_ratio(out, want, mag, 1e-5) <= 1.0);
        }
      }
    }
  }
}

TEST_CASE("linear_t reads each FP8 row block with its own scale", "[kernels][linear]") {
  // Activations live in one row block of the stored tensor, so each output sees one scale.
  for (const Context& ctx : backends()) {
    const TestWeight w = make_weight(DType::kF8E4M3, 300, 290, 91);
    const int64_t first = 60, rows = 240;  // covers rows [60, 300): row blocks 0, 1, 2
    const Matrix v = w.matrix().slice_rows(first, rows);
    for (int64_t br = 0; br < 3; ++br) {
      INFO(backend_name(ctx) << " row block " << br);
      const int64_t n = 3;
      auto x = random_vec(size_t(n * rows), uint32_t(br + 9), 0.5f, 1.0f);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < rows; ++r)
          if ((first + r) / w.block != br) x[size_t(t * rows + r)] = 0.0f;
      std::vector<float> out(size_t(n * w.C), NAN);
      kernels::linear_t(out.data(), x.data(), v, n, ctx);
      std::vector<double> want, mag;
      ref_linear_t(want, mag, x, w, first, rows, n);
      CHECK(worst_ratio(out, want, mag, 1e-5) <= 1.0);
    }
  }
}

TEST_CASE("linear and linear_t: a token's result does not depend on the tokens beside it", "[kernels][linear][batch-invariance]") {
  // Batch invariance: a sequence's logits must not change with what else is in its batch (the
  // model tests compare batched and single runs at 1e-5). Tiny rounding differences between a
  // call with 1 token and one with 40 grow through the layers past that, so the rows must be
  // bitwise equal, not merely close.
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      const TestWeight w = make_weight(dt, 96, 200, 13 + uint32_t(dt));
      const int64_t n = 40;
      const auto x = random_vec(size_t(n * w.C), 99);
      std::vector<float> all(size_t(n * w.R));
      kernels::linear(all.data(), x.data(), w.matrix(), n, ctx);
      int differ = 0;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t m : {int64_t(1), int64_t(3), int64_t(9)}) {
          if (t + m > n) continue;
          std::vector<float> part(size_t(m * w.R));
          kernels::linear(part.data(), x.data() + t * w.C, w.matrix(), m, ctx);
          for (int64_t r = 0; r < w.R; ++r) differ += part[size_t(r)] != all[size_t(t * w.R + r)];
        }
      }
      INFO(backend_name(ctx) << " linear, dtype " << dtype_label(dt));
      CHECK(differ == 0);

      const auto xt = random_vec(size_t(n * w.R), 98);
      std::vector<float> all_t(size_t(n * w.C));
      kernels::linear_t(all_t.data(), xt.data(), w.matrix(), n, ctx);
      int differ_t = 0;
      for (int64_t t = 0; t < n; ++t) {
        std::vector<float> one(size_t(w.C));
        kernels::linear_t(one.data(), xt.data() + t * w.R, w.matrix(), 1, ctx);
        for (int64_t c = 0; c < w.C; ++c) differ_t += one[size_t(c)] != all_t[size_t(t * w.C + c)];
      }
      INFO(backend_name(ctx) << " linear_t, dtype " << dtype_label(dt));
      CHECK(differ_t == 0);
    }
  }
}

TEST_CASE("attention: a query's result does not depend on the queries beside it", "[kernels][attention][batch-invariance]") {
  for (const Context& ctx : backends()) {
    const int64_t n_q = 9, n_kv = 60, H = 4, C = 32, dr = 16;
    const auto q = random_vec(size_t(n_q * H * (C + dr)), 31);
    const auto kv = random_vec(size_t(n_kv * C), 32), pe = random_vec(size_t(n_kv * dr), 33);
    std::vector<int32_t> pos(static_cast<size_t>(n_q));
    for (int64_t i = 0; i < n_q; ++i) pos[size_t(i)] = int32_t(n_kv - n_q + i);
    auto run = [&](int64_t first, int64_t count) {
      std::vector<float> out(size_t(count * H * C));
      kernels::AttentionParams p{};
      p.out = out.data();
      p.q_a = q.data() + first * H * (C + dr); p.q_token_stride = H * (C + dr); p.q_head_stride = C + dr;
      p.q_b = p.q_a + C; p.q_b_token_stride = H * (C + dr); p.q_b_head_stride = C + dr;
      p.k_a = kv.data(); p.k_a_token_stride = C;
      p.k_b = pe.data(); p.k_b_token_stride = dr;
      p.v = kv.data(); p.v_token_stride = C;
      p.q_pos = pos.data() + first;
      p.n_q = count; p.n_kv = n_kv; p.n_heads = H; p.da = C; p.db = dr; p.dv = C;
      p.scale = 0.2f;
      kernels::attention(p, ctx);
      return out;
    };
    const auto all = run(0, n_q);
    int differ = 0;
    for (int64_t i = 0; i < n_q; ++i) {
      const auto one = run(i, 1);
      for (int64_t k = 0; k < H * C; ++k) differ += one[size_t(k)] != all[size_t(i * H * C + k)];
    }
    INFO(backend_name(ctx));
    CHECK(differ == 0);
  }
}

TEST_CASE("linear with n = 0 writes nothing", "[kernels][linear]") {
  for (const Context& ctx : backends()) {
    const TestWeight w = make_weight(DType::kBF16, 16, 8, 3);
    float sentinel = 123.0f;
    kernels::linear(&sentinel, nullptr, w.matrix(), 0, ctx);
    kernels::linear_t(&sentinel, nullptr, w.matrix(), 0, ctx);
    CHECK(sentinel == 123.0f);
  }
}

// ============================================================================================
// rms_norm, embedding, silu_mul
// ============================================================================================

TEST_CASE("rms_norm matches the formula, zero rows give zeros through eps", "[kernels][ops]") {
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const int64_t d = 96, n = 12;
      const TestWeight w = make_weight(dt, 1, d, 17);
      auto x = random_vec(size_t(n * d), 23, -3.0f, 3.0f);
      std::fill(x.begin() + 2 * d, x.begin() + 3 * d, 0.0f);         // row 2: zeros
      for (int64_t i = 0; i < d; ++i) x[size_t(5 * d + i)] = 1e-4f;  // row 5: eps dominates
      x[size_t(7 * d + 3)] = 1e4f;                                   // row 7: one huge entry
      for (float eps : {1e-6f, 1e-2f}) {
        INFO(backend_name(ctx) << " weight " << dtype_label(dt) << " eps " << eps);
        std::vector<float> out(x.size(), NAN);
        kernels::rms_norm(out.data(), x.data(), w.matrix(), n, eps, ctx);
        std::vector<float> inplace = x;
        kernels::rms_norm(inplace.data(), inplace.data(), w.matrix(), n, eps, ctx);
        for (int64_t t = 0; t < n; ++t) {
          double ss = 0;
          for (int64_t i = 0; i < d; ++i) ss += double(x[size_t(t * d + i)]) * x[size_t(t * d + i)];
          const double inv = 1.0 / std::sqrt(ss / double(d) + double(eps));
          for (int64_t i = 0; i < d; ++i) {
            const double want = double(x[size_t(t * d + i)]) * inv * w.value[size_t(i)];
            INFO("row " << t << " col " << i);
            REQUIRE(std::isfinite(out[size_t(t * d + i)]));
            CHECK(std::fabs(out[size_t(t * d + i)] - want) <= 1e-6 * std::fabs(want) + 1e-30);
            CHECK(inplace[size_t(t * d + i)] == out[size_t(t * d + i)]);
          }
        }
        for (int64_t i = 0; i < d; ++i) CHECK(out[size_t(2 * d + i)] == 0.0f);
        // Row 5: 1e-4 / sqrt(1e-8 + eps) * w, which differs from sign(x) * w only through eps.
        CHECK(std::fabs(out[size_t(5 * d)] - 1e-4 / std::sqrt(1e-8 + double(eps)) * w.value[0]) <=
              1e-6 * std::fabs(w.value[0]));
      }
    }
  }
}

TEST_CASE("embedding copies the dequantized rows of the ids", "[kernels][ops]") {
  for (const Context& ctx : backends()) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      const TestWeight w = make_weight(dt, 300, 136, 41);
      const std::vector<int32_t> ids = {0, 299, 127, 128, 5, 5, 255, 256, 0};
      std::vector<float> out(ids.size() * size_t(w.C), NAN);
      kernels::embedding(out.data(), ids.data(), w.matrix(), int64_t(ids.size()), ctx);
      for (size_t t = 0; t < ids.size(); ++t)
        for (int64_t c = 0; c < w.C; ++c) {
          INFO(backend_name(ctx) << " dtype " << dtype_label(dt) << " token " << t << " col " << c);
          REQUIRE(double(out[t * size_t(w.C) + size_t(c)]) == w.value[size_t(ids[t] * w.C + c)]);
        }
    }
  }
}

TEST_CASE("silu_mul matches silu(g) * u, extremes included", "[kernels][ops]") {
  for (const Context& ctx : backends()) {
    for (int64_t n : {1, 3, 700}) {  // 700 x 100 > 2^16: the parallel path
      const int64_t d = 100;
      auto g = random_vec(size_t(n * d), 3, -8.0f, 8.0f);
      const auto u = random_vec(size_t(n * d), 4, -2.0f, 2.0f);
      const float extremes[] = {0.0f, -0.0f, 30.0f, -30.0f, 80.0f, -80.0f, -100.0f, 1e-8f};
      for (size_t i = 0; i < std::size(extremes); ++i) g[i] = extremes[i];
      std::vector<float> out(g.size(), NAN);
      kernels::silu_mul(out.data(), g.data(), u.data(), n, d, ctx);
      for (size_t i = 0; i < g.size(); ++i) {
        const double gd = g[i], want = gd / (1.0 + std::exp(-gd)) * u[i];
        INFO(backend_name(ctx) << " n " << n << " i " << i << " g " << g[i]);
        REQUIRE(std::isfinite(out[i]));
        CHECK(std::fabs(out[i] - want) <= 2e-6 * std::fabs(want) + 1e-35);
      }
      // In place over the gate, as mlp_forward calls it.
      std::vector<float> inplace = g;
      kernels::silu_mul(inplace.data(), inplace.data(), u.data(), n, d, ctx);
      CHECK(inplace == out);
    }
  }
}

// ============================================================================================
// rope
// ============================================================================================

TEST_CASE("rope rotates each pair, interleaved or halves, by exp(i pos inv_freq)", "[kernels][rope]") {
  using kernels::RopeLayout;
  struct Layout {
    int64_t n, heads, rope_dim, token_stride, head_stride, offset;
    float attn_factor;
  };
  // q_pe-like (rope part after a nope part, with padding), k_pe-like (one head, head stride 0),
  // and an attn_factor != 1.
  const Layout layouts[] = {
      {5, 4, 16, 4 * 48 + 7, 48, 32, 1.0f},
      {7, 1, 16, 48, 0, 32, 1.0f},
      {3, 3, 64, 3 * 70, 70, 2, 1.3f},
      {1, 2, 2, 10, 4, 1, 0.8f},
  };
  for (const Context& ctx : backends()) {
   for (const RopeLayout layout : {RopeLayout::kInterleaved, RopeLayout::kHalves}) {
    for (const Layout& L : layouts) {
      const int64_t half = L.rope_dim / 2;
      std::vector<float> inv_freq(static_cast<size_t>(half));
      for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = float(std::pow(10000.0, -2.0 * i / L.rope_dim) * (i % 3 ? 1.0 : 0.125));
      std::vector<int32_t> pos(static_cast<size_t>(L.n));
      for (int64_t t = 0; t < L.n; ++t) pos[size_t(t)] = int32_t(t == 0 ? 0 : 17 * t * t + 3 + (t == 2 ? 4000 : 0));
      const size_t size = size_t(L.n * L.token_stride + 8);
      const auto orig = random_vec(size, 61);
      std::vector<float> x = orig;
      kernels::RopeParams p{x.data() + L.offset, pos.data(), inv_freq.data(), L.n, L.heads, L.rope_dim,
                            L.token_stride, L.head_stride, L.attn_factor, layout};
      kernels::rope(p, ctx);
      std::vector<bool> touched(size, false);
      for (int64_t t = 0; t < L.n; ++t)
        for (int64_t h = 0; h < L.heads; ++h) {
          const size_t base = size_t(L.offset + t * L.token_stride + h * L.head_stride);
          for (int64_t i = 0; i < half; ++i) {
            // Pair i: (2i, 2i + 1) interleaved (model.py), (i, i + half) in halves (rotate_half).
            const size_t e0 = base + size_t(layout == RopeLayout::kInterleaved ? 2 * i : i);
            const size_t e1 = base + size_t(layout == RopeLayout::kInterleaved ? 2 * i + 1 : i + half);
            // The angle is model.py's float32 product of position and frequency.
            const double angle = double(float(pos[size_t(t)]) * inv_freq[size_t(i)]);
            const std::complex<double> z(orig[e0], orig[e1]);
            const std::complex<double> want = z * std::polar(double(L.attn_factor), angle);
            INFO(backend_name(ctx) << " rope_dim " << L.rope_dim << " token " << t << " head " << h << " pair " << i);
            CHECK(std::fabs(x[e0] - want.real()) <= 2e-6 * (std::abs(z) + 1e-30));
            CHECK(std::fabs(x[e1] - want.imag()) <= 2e-6 * (std::abs(z) + 1e-30));
            touched[e0] = touched[e1] = true;
          }
        }
      for (size_t k = 0; k < size; ++k)
        if (!touched[k] && x[k] != orig[k]) FAIL_CHECK("rope wrote outside the rope dims at offset " << k);
    }
   }
  }
}

// ============================================================================================
// attention
// ============================================================================================

namespace {

struct AttnCase {
  int64_t n_q, n_kv, H, da, db, dv;
  bool shared_keys;  // absorbed MLA: k_a = v, one latent per token for every head
  std::vector<int32_t> q_pos;
  int64_t kv_group = 1;  // GQA: query heads per key/value head (per-head keys only)
};

// out[i, h, :] = Σ_{t <= q_pos[i], t < n_kv} softmax_t(scale (q_a·k_a + q_b·k_b)) v[t]
void run_attention_case(const Context& ctx, const AttnCase& C, uint32_t seed) {
  const int64_t H = C.H, qw = C.da + C.db + 3;  // q rows padded: strides are not the widths
  const auto q = random_vec(size_t(C.n_q * H * qw), seed, -2.0f, 2.0f);
  const int64_t ka_w = C.shared_keys ? C.da : H / C.kv_group * (C.da + C.dv);  // naive: [k | v] per KV head
  auto kv = random_vec(size_t(C.n_kv * ka_w), seed + 1, -2.0f, 2.0f);
  auto pe = random_vec(size_t(C.n_kv * C.db), seed + 2, -2.0f, 2.0f);
  // Keys past every query's position get values that would dominate if they leaked.
  const int32_t max_pos = *std::max_element(C.q_pos.begin(), C.q_pos.end());
  for (int64_t t = max_pos + 1; t < C.n_kv; ++t) {
    std::fill(kv.begin() + t * ka_w, kv.begin() + (t + 1) * ka_w, 50.0f);
    std::fill(pe.begin() + t * C.db, pe.begin() + (t + 1) * C.db, 50.0f);
  }
  kernels::AttentionParams p{};
  std::vector<float> out(size_t(C.n_q * H * C.dv), NAN);
  p.out = out.data();
  p.q_a = q.data(); p.q_token_stride = H * qw; p.q_head_stride = qw;
  p.q_b = q.data() + C.da; p.q_b_token_stride = H * qw; p.q_b_head_stride = qw;
  if (C.shared_keys) {
    p.k_a = kv.data(); p.k_a_token_stride = C.da; p.k_a_head_stride = 0;
    p.v = kv.data(); p.v_token_stride = C.da; p.v_head_stride = 0;
    REQUIRE(C.dv == C.da);
  } else {
    p.k_a = kv.data(); p.k_a_token_stride = ka_w; p.k_a_head_stride = C.da + C.dv;
    p.v = kv.data() + C.da; p.v_token_stride = ka_w; p.v_head_stride = C.da + C.dv;
    p.kv_group = C.kv_group;
  }
  p.k_b = pe.data(); p.k_b_token_stride = C.db; p.k_b_head_stride = 0;
  p.q_pos = C.q_pos.data();
  p.n_q = C.n_q; p.n_kv = C.n_kv; p.n_heads = H; p.da = C.da; p.db = C.db; p.dv = C.dv;
  p.scale = 0.37f;
  kernels::attention(p, ctx);

  for (int64_t i = 0; i < C.n_q; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t visible = std::min<int64_t>(C.n_kv, C.q_pos[size_t(i)] + 1);
      std::vector<double> s(static_cast<size_t>(visible));
      for (int64_t t = 0; t < visible; ++t) {
        double dot = 0;
        for (int64_t d = 0; d < C.da; ++d)
          dot += double(q[size_t(i * H * qw + h * qw + d)]) *
                 kv[size_t(t * ka_w + (C.shared_keys ? 0 : h / C.kv_group * (C.da + C.dv)) + d)];
        for (int64_t d = 0; d < C.db; ++d) dot += double(q[size_t(i * H * qw + h * qw + C.da + d)]) * pe[size_t(t * C.db + d)];
        s[size_t(t)] = 0.37 * dot;
      }
      const double m = *std::max_element(s.begin(), s.end());
      double z = 0;
      for (double& v : s) z += (v = std::exp(v - m));
      for (int64_t d = 0; d < C.dv; ++d) {
        double want = 0, mag = 0;
        for (int64_t t = 0; t < visible; ++t) {
          const double v = kv[size_t(t * ka_w + (C.shared_keys ? 0 : h / C.kv_group * (C.da + C.dv) + C.da) + d)];
          want += s[size_t(t)] / z * v;
          mag += s[size_t(t)] / z * std::fabs(v);
        }
        const float got = out[size_t((i * H + h) * C.dv + d)];
        INFO(backend_name(ctx) << " query " << i << " (pos " << C.q_pos[size_t(i)] << ") head " << h << " dim " << d);
        REQUIRE(std::fabs(got - want) <= 1e-5 * mag + 1e-6);
      }
    }
}

// Attention of n_q queries [n_q, H, da + db] (each head's q_a then q_b) over one sequence: with
// `shared` every head reads the same rows as keys and values (absorbed MLA: head strides 0),
// otherwise head h reads [k | v] at h * (da + dv) of rows ka_w wide; roped keys [n_kv, db]. The
// caller points k_a, v and k_b at its rows (contiguous or paged).
kernels::AttentionParams attention_over(float* out, const float* q, const int32_t* q_pos, int64_t n_q, int64_t n_kv,
                                        int64_t H, int64_t da, int64_t db, int64_t dv, bool shared, int64_t ka_w,
                                        float scale) {
  kernels::AttentionParams p{};
  p.out = out;
  p.q_a = q; p.q_token_stride = H * (da + db); p.q_head_stride = da + db;
  p.q_b = q + da; p.q_b_token_stride = H * (da + db); p.q_b_head_stride = da + db;
  p.k_a_token_stride = p.v_token_stride = ka_w;
  p.k_a_head_stride = p.v_head_stride = shared ? 0 : da + dv;
  p.k_b_token_stride = db; p.k_b_head_stride = 0;
  p.q_pos = q_pos;
  p.n_q = n_q; p.n_kv = n_kv; p.n_heads = H; p.da = da; p.db = db; p.dv = dv;
  p.scale = scale;
  return p;
}

}  // namespace

TEST_CASE("attention matches a naive softmax reference", "[kernels][attention]") {
  for (const Context& ctx : backends()) {
    SECTION("per-head keys (naive MLA), prefill from 0") {
      run_attention_case(ctx, {6, 6, 4, 32, 16, 24, false, {0, 1, 2, 3, 4, 5}}, 1);
    }
    SECTION("shared latent keys (absorbed MLA), prefill from 0") {
      run_attention_case(ctx, {6, 6, 4, 32, 16, 32, true, {0, 1, 2, 3, 4, 5}}, 2);
    }
    SECTION("a chunk at positions 40.. over a cache of 44 rows, future rows poisoned") {
      run_attention_case(ctx, {3, 48, 3, 32, 16, 32, true, {40, 41, 42}}, 3);
      run_attention_case(ctx, {3, 48, 3, 16, 8, 20, false, {40, 41, 42}}, 4);
    }
    SECTION("decode: one query far along, long cache") {
      run_attention_case(ctx, {1, 700, 2, 32, 16, 32, true, {699}}, 5);
      run_attention_case(ctx, {1, 300, 2, 32, 16, 32, false, {250}}, 6);
    }
    SECTION("contexts over several chunks of 4096 keys, split over the sequence and folded") {
      run_attention_case(ctx, {1, 9000, 3, 72, 16, 72, true, {8999}}, 12);
      run_attention_case(ctx, {4, 8300, 2, 16, 8, 20, false, {127, 128, 4096, 8299}}, 13);
    }
    SECTION("positions beyond n_kv see every key") {
      run_attention_case(ctx, {2, 10, 2, 8, 4, 8, true, {25, 3}}, 7);
    }
    SECTION("one key only, zero-width second part") {
      run_attention_case(ctx, {1, 1, 1, 4, 0, 4, true, {0}}, 8);
    }
    SECTION("grouped-query: query head h reads KV head h / group (Qwen2, Llama)") {
      run_attention_case(ctx, {6, 6, 4, 16, 0, 16, false, {0, 1, 2, 3, 4, 5}, 2}, 9);
      run_attention_case(ctx, {2, 90, 8, 32, 0, 32, false, {70, 89}, 8}, 10);
      run_attention_case(ctx, {3, 40, 6, 24, 0, 24, false, {37, 38, 39}, 3}, 11);
    }
  }
}

// Long contexts are split over the sequence (segments of 128 keys folded into chunks of 4096,
// decode's chunks on different threads) and still give the bits of one thread walking the keys:
// whatever the threads, the queries beside, segment and chunk boundaries, odd heads and widths.
TEST_CASE("attention: split over a long sequence, the same bits whatever the threads and the queries beside",
          "[kernels][attention][batch-invariance][kv]") {
  for (const Context& ctx : backends()) {
    for (bool shared : {true, false}) {
      const int64_t H = 5, da = shared ? 72 : 24, db = 8, dv = shared ? da : 20, n_kv = 9000;
      const int64_t ka_w = shared ? da : H * (da + dv);
      const auto kv = random_vec(size_t(n_kv * ka_w), 71, -2.0f, 2.0f), pe = random_vec(size_t(n_kv * db), 72, -2.0f, 2.0f);
      const auto q = random_vec(size_t(24 * H * (da + db)), 73, -2.0f, 2.0f);
      std::vector<int32_t> pos = {0, 127, 128, 4095, 4096, 8191, 8192};
      for (int32_t t = 8983; t < 9000; ++t) pos.push_back(t);
      const int64_t n_q = int64_t(pos.size());
      auto run = [&](int64_t first, int64_t count, int threads) {
        std::vector<float> out(size_t(count * H * dv), NAN);
        kernels::AttentionParams p = attention_over(out.data(), q.data() + first * H * (da + db), pos.data() + first,
                                                    count, n_kv, H, da, db, dv, shared, ka_w, 0.11f);
        p.k_a = kv.data(); p.v = kv.data() + (shared ? 0 : da); p.k_b = pe.data();
        const int before = omp_get_max_threads();
        omp_set_num_threads(threads);
        kernels::attention(p, ctx);
        omp_set_num_threads(before);
        return out;
      };
      INFO(backend_name(ctx) << (shared ? " shared latent keys" : " per-head keys"));
      const auto want = run(0, n_q, 1);  // one thread, every chunk in order
      for (int threads : {2, 3, 8}) {
        INFO(threads << " threads");
        CHECK(run(0, n_q, threads) == want);
        int differ = 0;
        for (int64_t i = 0; i < n_q; ++i) {  // alone: decode's schedule, chunks in parallel
          const auto one = run(i, 1, threads);
          for (int64_t k = 0; k < H * dv; ++k) differ += one[size_t(k)] != want[size_t(i * H * dv + k)];
        }
        CHECK(differ == 0);
      }
    }
  }
}

// Attention is compiled once per CPU variant (kernels/cpu/attention_impl.h): the vector widths,
// tiles and four-at-once reductions differ, the bits may not (a cluster mixes CPUs).
TEST_CASE("attention gives the same bits on every CPU variant", "[kernels][attention][variants]") {
  const auto saved = kernels::cpu::active_variant();
  INFO("variants this CPU runs: " << kernels::cpu_variants_supported());
  for (bool shared : {true, false})
    for (int64_t da : {64, 72}) {  // whole 16-lane dots (reduced four at once) and a tail
      const int64_t H = 6, db = 16, dv = shared ? da : 40, n_kv = 5000, ka_w = shared ? da : H * (da + dv);
      const auto kv = random_vec(size_t(n_kv * ka_w), 81, -2.0f, 2.0f), pe = random_vec(size_t(n_kv * db), 82, -2.0f, 2.0f);
      const auto q = random_vec(size_t(3 * H * (da + db)), 83, -2.0f, 2.0f);
      const std::vector<int32_t> pos = {130, 4999, 4999};
      auto run = [&](int64_t n_q) {
        std::vector<float> out(size_t(n_q * H * dv), NAN);
        kernels::AttentionParams p =
            attention_over(out.data(), q.data(), pos.data() + (3 - n_q), n_q, n_kv, H, da, db, dv, shared, ka_w, 0.13f);
        p.k_a = kv.data(); p.v = kv.data() + (shared ? 0 : da); p.k_b = pe.data();
        kernels::attention(p, Context{});
        return out;
      };
      kernels::cpu::set_variant(kernels::cpu::Variant::kBaseline);
      const auto want3 = run(3), want1 = run(1);
      for (auto v : kernels::cpu::supported_variants()) {
        kernels::cpu::set_variant(v);
        INFO("variant " << kernels::cpu::variant_name(v) << (shared ? " shared keys" : " per-head keys") << " da " << da);
        const auto got3 = run(3), got1 = run(1);
        CHECK(std::memcmp(got3.data(), want3.data(), want3.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(got1.data(), want1.data(), want1.size() * sizeof(float)) == 0);
      }
    }
  kernels::cpu::set_variant(saved);
}

// The KV pool (node/kv_cache.h) hands attention its rows where they are: in blocks of 64 in any
// order, and in bf16. Neither may change a bit: the same values, contiguous in float32, are the
// reference. Absorbed MLA (one latent for every head) and per-head keys with GQA groups.
TEST_CASE("attention over a paged bf16 cache gives the contiguous float cache's bits", "[kernels][attention][kv]") {
  for (const Context& ctx : backends()) {
    for (bool shared : {true, false}) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        INFO(backend_name(ctx) << (shared ? " shared latent keys " : " per-head keys ") << dtype_name(dtype));
        const int64_t H = 4, da = shared ? 48 : 24, db = 16, dv = shared ? da : 20, n_kv = 300, bt = 64;
        const int64_t n_q = 5, kv_group = shared ? 1 : 2;
        const int64_t ka_w = shared ? da : H / kv_group * (da + dv);
        std::vector<float> kv = random_vec(size_t(n_kv * ka_w), 41, -2.0f, 2.0f), pe = random_vec(size_t(n_kv * db), 42, -2.0f, 2.0f);
        for (float& x : kv) x = bf16_to_float(float_to_bf16(x));  // values a bf16 cache holds exactly
        for (float& x : pe) x = bf16_to_float(float_to_bf16(x));
        const auto q = random_vec(size_t(n_q * H * (da + db)), 43, -2.0f, 2.0f);
        const std::vector<int32_t> q_pos = {0, 63, 64, 200, 299};
        auto params = [&](float* out) {
          kernels::AttentionParams p = attention_over(out, q.data(), q_pos.data(), n_q, n_kv, H, da, db, dv, shared, ka_w, 0.29f);
          p.kv_group = kv_group;
          return p;
        };
        std::vector<float> want(size_t(n_q * H * dv)), got(want.size(), NAN);
        kernels::AttentionParams p = params(want.data());
        p.k_a = kv.data(); p.v = kv.data() + (shared ? 0 : da); p.k_b = pe.data();
        kernels::attention(p, ctx);
        // The same rows in blocks of 64 (each [64, ka_w] then [64, db]), blocks shuffled in a pool of 9.
        const int64_t n_blocks = 9, block = bt * (ka_w + db), per = (n_kv + bt - 1) / bt;
        std::vector<int32_t> table(static_cast<size_t>(n_blocks), 0);
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), std::mt19937(5));
        table.resize(size_t(per));
        std::vector<float> pool_f(size_t(n_blocks * block), 1e4f);  // rows outside the table would show
        std::vector<uint16_t> pool_h(pool_f.size(), float_to_bf16(1e4f));
        for (int64_t t = 0; t < n_kv; ++t) {
          const int64_t at = table[size_t(t / bt)] * block + (t % bt) * ka_w, at_pe = table[size_t(t / bt)] * block + bt * ka_w + (t % bt) * db;
          for (int64_t i = 0; i < ka_w; ++i) pool_f[size_t(at + i)] = kv[size_t(t * ka_w + i)];
          for (int64_t i = 0; i < db; ++i) pool_f[size_t(at_pe + i)] = pe[size_t(t * db + i)];
        }
        for (size_t i = 0; i < pool_f.size(); ++i) pool_h[i] = float_to_bf16(pool_f[i]);
        p = params(got.data());
        p.kv_dtype = dtype;
        p.kv_blocks = table.data();
        p.kv_block_tokens = bt;
        p.kv_block_stride = block;
        if (dtype == DType::kF32) {
          p.k_a = pool_f.data(); p.v = pool_f.data() + (shared ? 0 : da); p.k_b = pool_f.data() + bt * ka_w;
        } else {
          p.k_a = pool_h.data(); p.v = pool_h.data() + (shared ? 0 : da); p.k_b = pool_h.data() + bt * ka_w;
        }
        kernels::attention(p, ctx);
        CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
      }
    }
  }
}

// fp8 (e4m3) rows with a scale each: paged or contiguous, the same bits; and close to the float
// cache of the values they round (the scale folds into each dot and each value's weight).
TEST_CASE("attention over an fp8 cache: paged as contiguous, near the float cache", "[kernels][attention][kv]") {
  for (const Context& ctx : backends()) {
    const int64_t H = 4, da = 48, db = 16, dv = da, n_kv = 200, bt = 64, n_q = 3;
    const std::vector<float> kv = random_vec(size_t(n_kv * da), 51, -2.0f, 2.0f), pe = random_vec(size_t(n_kv * db), 52, -3.0f, 3.0f);
    const auto q = random_vec(size_t(n_q * H * (da + db)), 53, -2.0f, 2.0f);
    const std::vector<int32_t> q_pos = {10, 150, 199};
    // Contiguous fp8: codes [n_kv, da] and [n_kv, db], scales [n_kv, 2].
    std::vector<uint8_t> kc(kv.size()), pc(pe.size());
    std::vector<float> scales(size_t(n_kv * 2));
    auto quantize = [](const float* x, int64_t n, uint8_t* codes, float* scale) {
      float amax = 0;
      for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
      *scale = amax / 448.0f;
      for (int64_t i = 0; i < n; ++i) codes[i] = float_to_fp8_e4m3(x[i] / *scale);
    };
    for (int64_t t = 0; t < n_kv; ++t) {
      quantize(kv.data() + t * da, da, kc.data() + t * da, &scales[size_t(2 * t)]);
      quantize(pe.data() + t * db, db, pc.data() + t * db, &scales[size_t(2 * t + 1)]);
    }
    auto params = [&](float* out) {
      return attention_over(out, q.data(), q_pos.data(), n_q, n_kv, H, da, db, dv, true, da, 0.21f);
    };
    std::vector<float> contiguous(size_t(n_q * H * dv)), paged(contiguous.size(), NAN), exact(contiguous.size());
    kernels::AttentionParams p = params(contiguous.data());
    p.kv_dtype = DType::kF8E4M3;
    p.k_a = kc.data(); p.v = kc.data(); p.k_b = pc.data(); p.kv_scales = scales.data();
    kernels::attention(p, ctx);
    // Paged: blocks of 64 rows [64 x da codes][64 x db codes][64 x 2 scales], shuffled.
    const int64_t block = bt * (da + db + 8), n_blocks = 6, per = (n_kv + bt - 1) / bt;
    std::vector<int32_t> table(static_cast<size_t>(n_blocks), 0);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(9));
    table.resize(size_t(per));
    std::vector<uint32_t> words(size_t(n_blocks * block / 4), 0x7f7f7f7fu);
    uint8_t* pool = reinterpret_cast<uint8_t*>(words.data());
    for (int64_t t = 0; t < n_kv; ++t) {
      uint8_t* b = pool + table[size_t(t / bt)] * block;
      std::copy_n(kc.data() + t * da, da, b + (t % bt) * da);
      std::copy_n(pc.data() + t * db, db, b + bt * da + (t % bt) * db);
      std::copy_n(&scales[size_t(2 * t)], 2, reinterpret_cast<float*>(b + bt * (da + db)) + (t % bt) * 2);
    }
    p = params(paged.data());
    p.kv_dtype = DType::kF8E4M3;
    p.k_a = pool; p.v = pool; p.k_b = pool + bt * da;
    p.kv_blocks = table.data(); p.kv_block_tokens = bt; p.kv_block_stride = block;
    p.kv_scales = reinterpret_cast<const float*>(pool + bt * (da + db));
    p.kv_scale_block_stride = block / 4;
    kernels::attention(p, ctx);
    INFO(backend_name(ctx));
    CHECK(std::memcmp(paged.data(), contiguous.data(), paged.size() * sizeof(float)) == 0);
    // The float cache of the unrounded values: fp8's 3 mantissa bits keep the outputs near.
    p = params(exact.data());
    p.k_a = kv.data(); p.v = kv.data(); p.k_b = pe.data();
    kernels::attention(p, ctx);
    double worst = 0;
    for (size_t i = 0; i < exact.size(); ++i) worst = std::max(worst, double(std::fabs(exact[i] - contiguous[i])));
    CHECK(worst < 0.25);
    CHECK(worst > 1e-4);  // it does round
  }
}

TEST_CASE("attention: a query at position p ignores keys after p", "[kernels][attention]") {
  // Same queries against two caches that differ only after position 3: outputs for q_pos <= 3
  // must be identical, the one at q_pos 5 must differ.
  for (const Context& ctx : backends()) {
    const int64_t n_kv = 8, H = 2, da = 4, db = 2, dv = 4;
    const auto q = random_vec(size_t(3 * H * (da + db)), 12);
    auto k1 = random_vec(size_t(n_kv * da), 13);
    auto pe1 = random_vec(size_t(n_kv * db), 14);
    auto k2 = k1, pe2 = pe1;
    for (int64_t t = 4; t < n_kv; ++t) {
      for (int64_t d = 0; d < da; ++d) k2[size_t(t * da + d)] *= -3.0f;
      pe2[size_t(t * db)] += 1.0f;
    }
    const std::vector<int32_t> qp = {2, 3, 5};
    auto run = [&](const std::vector<float>& k, const std::vector<float>& pe) {
      std::vector<float> out(static_cast<size_t>(3 * H * dv));
      kernels::AttentionParams p{};
      p.out = out.data();
      p.q_a = q.data(); p.q_token_stride = H * (da + db); p.q_head_stride = da + db;
      p.q_b = q.data() + da; p.q_b_token_stride = H * (da + db); p.q_b_head_stride = da + db;
      p.k_a = k.data(); p.k_a_token_stride = da; p.k_a_head_stride = 0;
      p.k_b = pe.data(); p.k_b_token_stride = db; p.k_b_head_stride = 0;
      p.v = k.data(); p.v_token_stride = da; p.v_head_stride = 0;
      p.q_pos = qp.data();
      p.n_q = 3; p.n_kv = n_kv; p.n_heads = H; p.da = da; p.db = db; p.dv = dv;
      p.scale = 1.0f;
      kernels::attention(p, ctx);
      return out;
    };
    const auto o1 = run(k1, pe1), o2 = run(k2, pe2);
    for (int64_t i = 0; i < 2 * H * dv; ++i) CHECK(o1[size_t(i)] == o2[size_t(i)]);
    double diff = 0;
    for (int64_t i = 2 * H * dv; i < 3 * H * dv; ++i) diff = std::max(diff, double(std::fabs(o1[size_t(i)] - o2[size_t(i)])));
    CHECK(diff > 1e-3);
  }
}

// ============================================================================================
// route
// ============================================================================================

namespace {

struct RouteCase {
  int64_t E, topk, n_groups, topk_groups;
  kernels::Scoring scoring;
  kernels::GroupScore group_score;
  bool normalize;
  double scale;
};

struct Routed {
  std::vector<int32_t> idx;  // ascending expert index
  std::vector<double> w;     // matching weights
};

// DeepSeek's Gate.forward (inference/model.py) in double, with the group rule spelled out:
// scores = sigmoid or softmax of the logits; selection scores = scores + bias; with groups, a
// group scores the sum of its top-2 selection scores (kTop2Sum, noaux_tc) or its best one
// (kMax, group_limited_greedy), only the topk_groups best groups stay; the topk best selection
// scores win; their weights are the *unbiased* scores, normalised if asked, then scaled.
Routed ref_route(const RouteCase& rc, const double* logits, const double* bias) {
  const int64_t E = rc.E, per = E / rc.n_groups;
  std::vector<double> score(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
  if (rc.scoring == kernels::Scoring::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) score[size_t(e)] = 1.0 / (1.0 + std::exp(-logits[e]));
  } else {
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += std::exp(logits[e]);
    for (int64_t e = 0; e < E; ++e) score[size_t(e)] = std::exp(logits[e]) / z;
  }
  for (int64_t e = 0; e < E; ++e) sel[size_t(e)] = score[size_t(e)] + (bias ? bias[e] : 0.0);
  std::vector<bool> allowed(size_t(E), true);
  if (rc.group_score != kernels::GroupScore::kNone && rc.n_groups > 1) {
    std::vector<std::pair<double, int64_t>> groups;
    for (int64_t g = 0; g < rc.n_groups; ++g) {
      std::vector<double> s(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(s.rbegin(), s.rend());
      groups.push_back({rc.group_score == kernels::GroupScore::kMax ? s[0] : s[0] + s[1], g});
    }
    std::sort(groups.begin(), groups.end(), [](auto a, auto b) { return a.first > b.first; });
    std::fill(allowed.begin(), allowed.end(), false);
    for (int64_t k = 0; k < rc.topk_groups; ++k)
      for (int64_t e = 0; e < per; ++e) allowed[size_t(groups[size_t(k)].second * per + e)] = true;
  }
  std::vector<std::pair<double, int32_t>> cand;
  for (int64_t e = 0; e < E; ++e)
    if (allowed[size_t(e)]) cand.push_back({sel[size_t(e)], int32_t(e)});
  std::sort(cand.begin(), cand.end(), [](auto a, auto b) { return a.first > b.first; });
  Routed r;
  for (int64_t k = 0; k < rc.topk; ++k) r.idx.push_back(cand[size_t(k)].second);
  std::sort(r.idx.begin(), r.idx.end());
  double sum = 0;
  for (int32_t e : r.idx) sum += score[size_t(e)];
  for (int32_t e : r.idx) r.w.push_back((rc.normalize ? score[size_t(e)] / sum : score[size_t(e)]) * rc.scale);
  return r;
}

// Runs the kernel on n tokens and returns each token's (index, weight) pairs by ascending index.
std::vector<Routed> run_route(const Context& ctx, const RouteCase& rc, const std::vector<float>& logits,
                              const std::vector<float>* bias) {
  const int64_t n = int64_t(logits.size()) / rc.E;
  std::vector<int32_t> idx(size_t(n * rc.topk), -1);
  std::vector<float> w(size_t(n * rc.topk), NAN);
  kernels::RouteParams p{idx.data(), w.data(), logits.data(), bias ? bias->data() : nullptr,
                         n, rc.E, rc.topk, rc.n_groups, rc.topk_groups,
                         rc.scoring, rc.group_score, rc.normalize, float(rc.scale)};
  kernels::route(p, ctx);
  std::vector<Routed> out(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    std::vector<std::pair<int32_t, float>> pairs;
    for (int64_t k = 0; k < rc.topk; ++k) pairs.push_back({idx[size_t(t * rc.topk + k)], w[size_t(t * rc.topk + k)]});
    std::sort(pairs.begin(), pairs.end());
    for (auto [e, x] : pairs) {
      out[size_t(t)].idx.push_back(e);
      out[size_t(t)].w.push_back(x);
    }
  }
  return out;
}

void check_routed(const Routed& got, const Routed& want) {
  REQUIRE(got.idx == want.idx);
  for (size_t k = 0; k < want.w.size(); ++k) CHECK(std::fabs(got.w[k] - want.w[k]) <= 2e-6 * std::fabs(want.w[k]) + 1e-9);
}

// Logits whose sigmoid is s.
double logit(double s) { return std::log(s / (1.0 - s)); }

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("route matches Gate.forward on random logits for every rule", "[kernels][route]") {
  using kernels::GroupScore;
  using kernels::Scoring;
  const RouteCase cases[] = {
      {256, 8, 8, 4, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 2.5},   // DeepSeek-V3
      {160, 6, 8, 3, Scoring::kSoftmax, GroupScore::kMax, false, 16.0},     // DeepSeek-V2
      {64, 6, 1, 1, Scoring::kSoftmax, GroupScore::kNone, false, 1.0},      // V2-Lite: greedy
      {16, 4, 4, 2, Scoring::kSigmoid, GroupScore::kTop2Sum, false, 1.5},
      {16, 4, 4, 4, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 1.0},    // every group kept
      {12, 3, 3, 1, Scoring::kSoftmax, GroupScore::kMax, true, 1.0},        // one group kept
      {8, 1, 2, 1, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 1.0},     // top-1: weight 1
      {8, 8, 1, 1, Scoring::kSoftmax, GroupScore::kNone, false, 3.0},       // every expert
  };
  for (const Context& ctx : backends()) {
    for (const RouteCase& rc : cases) {
      for (bool with_bias : {false, true}) {
        INFO(backend_name(ctx) << " E " << rc.E << " topk " << rc.topk << " groups " << rc.n_groups << "/"
                               << rc.topk_groups << " bias " << with_bias);
        const int64_t n = 40;
        const auto logits = random_vec(size_t(n * rc.E), uint32_t(rc.E + rc.topk), -4.0f, 4.0f);
        const auto bias = random_vec(size_t(rc.E), uint32_t(rc.E * 3), -0.3f, 0.3f);
        const auto got = run_route(ctx, rc, logits, with_bias ? &bias : nullptr);
        const auto ld = to_double(logits), bd = to_double(bias);
        for (int64_t t = 0; t < n; ++t) {
          INFO("token " << t);
          check_routed(got[size_t(t)], ref_route(rc, ld.data() + t * rc.E, with_bias ? bd.data() : nullptr));
        }
      }
    }
  }
}

TEST_CASE("route: the bias selects experts but does not weight them", "[kernels][route]") {
  using kernels::GroupScore;
  using kernels::Scoring;
  // Unbiased, experts 0 and 1 lead; the bias lifts 5 and 6 above them. Right: {5, 6} with the
  // weights of sigmoid(logit) (0.40, 0.30 normalised). Ignoring the bias picks {0, 1};
  // weighting with biased scores gives (0.40+0.7, 0.30+0.7) normalised instead.
  const RouteCase rc{8, 2, 1, 1, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 2.5};
  const std::vector<double> s = {0.9, 0.8, 0.2, 0.15, 0.1, 0.4, 0.3, 0.05};
  const std::vector<double> b = {0, 0, 0, 0, 0, 0.7, 0.7, 0};
  std::vector<float> logits, bias(b.begin(), b.end());
  for (double x : s) logits.push_back(float(logit(x)));
  const Routed want = ref_route(rc, to_double(logits).data(), b.data());
  REQUIRE(want.idx == std::vector<int32_t>{5, 6});
  REQUIRE(ref_route(rc, to_double(logits).data(), nullptr).idx != want.idx);  // the wrong rule differs
  CHECK(std::fabs(want.w[0] - 2.5 * 0.4 / 0.7) < 1e-6);
  for (const Context& ctx : backends()) {
    INFO(backend_name(ctx));
    check_routed(run_route(ctx, rc, logits, &bias)[0], want);
  }
}

TEST_CASE("route: group limiting, top-2-sum vs max group scores", "[kernels][route]") {
  using kernels::GroupScore;
  using kernels::Scoring;
  // Four groups of two experts, sigmoid scores:
  //   group 0 {0.90, 0.01}: best single expert, top-2 sum 0.91
  //   group 1 {0.52, 0.47}: top-2 sum 0.99
  //   group 2 {0.55, 0.50}: top-2 sum 1.05
  //   group 3 {0.10, 0.12}
  // noaux_tc (top-2 sum, 2 groups): groups 2, 1 -> experts {4, 2}.
  // Max group score: groups 0, 2 -> experts {0, 4}. No group limit: experts {0, 4} as well, so a
  // third case separates "no limit" from "max": with topk_groups 1 and max, only group 0 -> {0, 1}.
  const std::vector<double> s = {0.90, 0.01, 0.52, 0.47, 0.55, 0.50, 0.10, 0.12};
  std::vector<float> logits;
  for (double x : s) logits.push_back(float(logit(x)));
  const auto ld = to_double(logits);
  const RouteCase top2{8, 2, 4, 2, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 2.5};
  const RouteCase max2{8, 2, 4, 2, Scoring::kSigmoid, GroupScore::kMax, true, 2.5};
  const RouteCase max1{8, 2, 4, 1, Scoring::kSigmoid, GroupScore::kMax, false, 1.0};
  const RouteCase none{8, 2, 4, 2, Scoring::kSigmoid, GroupScore::kNone, true, 2.5};
  REQUIRE(ref_route(top2, ld.data(), nullptr).idx == std::vector<int32_t>{2, 4});
  REQUIRE(ref_route(max2, ld.data(), nullptr).idx == std::vector<int32_t>{0, 4});
  REQUIRE(ref_route(max1, ld.data(), nullptr).idx == std::vector<int32_t>{0, 1});
  REQUIRE(ref_route(none, ld.data(), nullptr).idx == std::vector<int32_t>{0, 4});
  for (const Context& ctx : backends()) {
    INFO(backend_name(ctx));
    for (const RouteCase* rc : {&top2, &max2, &max1, &none}) {
      INFO("group rule " << int(rc->group_score) << " topk_groups " << rc->topk_groups);
      check_routed(run_route(ctx, *rc, logits, nullptr)[0], ref_route(*rc, ld.data(), nullptr));
    }
  }
}

TEST_CASE("route: groups are ranked by biased scores (noaux_tc)", "[kernels][route]") {
  using kernels::GroupScore;
  using kernels::Scoring;
  // Unbiased, group 0 {0.9, 0.8} (sum 1.7) is the best group; the bias lifts group 3
  // {0.35, 0.25} by 0.6 each to a biased sum of 1.8. Right (1 group kept): experts {6, 7},
  // weighted by their unbiased scores 0.35 / 0.25 normalised. Ignoring the bias: {0, 1}.
  const RouteCase rc{8, 2, 4, 1, Scoring::kSigmoid, GroupScore::kTop2Sum, true, 1.0};
  const std::vector<double> s = {0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.35, 0.25};
  const std::vector<double> b = {0, 0, 0, 0, 0, 0, 0.6, 0.6};
  std::vector<float> logits, bias(b.begin(), b.end());
  for (double x : s) logits.push_back(float(logit(x)));
  const auto ld = to_double(logits);
  const Routed want = ref_route(rc, ld.data(), b.data());
  REQUIRE(want.idx == std::vector<int32_t>{6, 7});
  REQUIRE(ref_route(rc, ld.data(), nullptr).idx == std::vector<int32_t>{0, 1});
  CHECK(std::fabs(want.w[0] - 0.35 / 0.6) < 1e-6);
  for (const Context& ctx : backends()) {
    INFO(backend_name(ctx));
    check_routed(run_route(ctx, rc, logits, &bias)[0], want);
  }
}

TEST_CASE("route: softmax scores over all experts, before group masking", "[kernels][route]") {
  using kernels::GroupScore;
  using kernels::Scoring;
  // V2 semantics: softmax over all 8 experts, groups by max, weights are the (unrenormalised)
  // softmax probabilities times the scale. Renormalising over the kept experts would differ.
  const RouteCase rc{8, 3, 4, 2, Scoring::kSoftmax, GroupScore::kMax, false, 16.0};
  const std::vector<float> logits = {2.0f, 1.9f, -1.0f, 0.5f, 1.5f, 1.4f, 3.0f, -2.0f};
  const auto ld = to_double(logits);
  const Routed want = ref_route(rc, ld.data(), nullptr);
  // Groups by max: g3 (3.0), g0 (2.0) -> experts {0, 1, 6}.
  REQUIRE(want.idx == std::vector<int32_t>{0, 1, 6});
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  CHECK(std::fabs(want.w[2] - 16.0 * std::exp(3.0) / z) < 1e-9);
  for (const Context& ctx : backends()) {
    INFO(backend_name(ctx));
    check_routed(run_route(ctx, rc, logits, nullptr)[0], want);
  }
}

namespace {
// The canonical order of linear (kernels/cpu/gemm.h, docs/performance.md), written out plainly:
// column c goes to lane c % 16, each lane accumulates with a fused multiply-add in increasing c,
// then lanes combine as a[i] += a[i + 8], + 4, + 2, + 1.
float canonical_dot(const double* w, const float* x, int64_t K) {
  float lane[16] = {};
  for (int64_t c = 0; c < K; ++c) lane[c % 16] = std::fma(float(w[c]), x[c], lane[c % 16]);
  for (int s = 8; s > 0; s /= 2)
    for (int i = 0; i < s; ++i) lane[i] += lane[i + s];
  return lane[0];
}
}  // namespace

TEST_CASE("linear and linear_t follow their canonical orders bit for bit on every CPU variant, token count and path", "[kernels][linear][batch-invariance][variants]") {
  // Decode (1-4 tokens, stored weights), prefill (float32 panels, packed when K % 16 == 0, with
  // the unaligned tail otherwise), several row blocks, views starting mid-block: all must give
  // exactly the canonical sum, so a token's logits cannot depend on its batch, its chunk or the
  // CPU the node runs on.
  const auto saved = kernels::cpu::active_variant();
  const auto variants = kernels::cpu::supported_variants();
  INFO("variants this CPU runs: " << kernels::cpu_variants_supported());
  CHECK(!variants.empty());
  for (auto v : variants) {
    kernels::cpu::set_variant(v);
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
      for (auto [R, C, first] : {std::tuple<int64_t, int64_t, int64_t>{96, 256, 0}, {300, 384, 37}, {37, 208, 5},
                                 {160, 200, 0}, {9, 19, 0}}) {
        const TestWeight w = make_weight(dt, R, C, 7 + uint32_t(R));
        const Matrix view = w.matrix().slice_rows(first, R - first);
        for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 13, 40}) {
          const auto x = random_vec(size_t(n * C), uint32_t(n * 31 + C));
          std::vector<float> out(size_t(n * view.rows), NAN);
          kernels::linear(out.data(), x.data(), view, n, Context{});
          int64_t differ = 0;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t r = 0; r < view.rows; ++r)
              differ += out[size_t(t * view.rows + r)] !=
                        canonical_dot(w.value.data() + (first + r) * C, x.data() + t * C, C);
          INFO("variant " << kernels::cpu::variant_name(v) << " dtype " << dtype_label(dt) << " shape " << R << "x"
                          << C << " view from row " << first << " tokens " << n);
          CHECK(differ == 0);
          // linear_t's order: each column sums its rows in ascending order, one fma per term.
          const auto xt = random_vec(size_t(n * view.rows), uint32_t(n * 17 + R));
          std::vector<float> out_t(size_t(n * C), NAN);
          kernels::linear_t(out_t.data(), xt.data(), view, n, Context{});
          int64_t differ_t = 0;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t c = 0; c < C; ++c) {
              float acc = 0.0f;
              for (int64_t r = 0; r < view.rows; ++r)
                acc = std::fma(xt[size_t(t * view.rows + r)], float(w.value[size_t((first + r) * C + c)]), acc);
              differ_t += std::memcmp(&acc, &out_t[size_t(t * C + c)], 4) != 0;
            }
          CHECK(differ_t == 0);
        }
      }
    }
  }
  kernels::cpu::set_variant(saved);
}

TEST_CASE("shoal inspect --system names the CPU variant, SHOAL_CPU forces a lower one, a wrong one is refused", "[kernels][variants][cli]") {
  int status = 0;
  const std::string out = test::run_command(std::string(SHOAL_BINARY) + " inspect --system --json", &status);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const auto j = nlohmann::json::parse(out);
  CHECK(j["cpu_variant"] == kernels::cpu_variant());
  CHECK(j["read_bandwidth_gbs"].get<double>() > 0.1);
  CHECK(j["fma_peak_gflops"].get<double>() > 0.1);
  for (const char* tokens : {"1", "2", "4", "8", "16"}) CHECK(j["linear_gflops"][tokens].get<double>() > 0.01);
  CHECK(j["affinity_cpus"].get<int>() >= 1);
  for (auto v : kernels::cpu::supported_variants()) {
    const std::string name(kernels::cpu::variant_name(v));
    const auto forced = nlohmann::json::parse(
        test::run_command("SHOAL_CPU=" + name + " " + SHOAL_BINARY + " inspect --system --json", &status));
    CHECK(forced["cpu_variant"] == name);
  }
  const std::string err = test::run_command("SHOAL_CPU=avx9000 " + std::string(SHOAL_BINARY) + " inspect --system 2>&1", &status);
  CHECK(WEXITSTATUS(status) == 2);
  CHECK(err.find("SHOAL_CPU=avx9000 is not a kernel variant") != std::string::npos);
}
